"""Paired comparisons of controllers by seed, and aggregates across presets with rliable.

Every controller is evaluated on the same seeds, so a comparison is *paired*: seed ``i`` gives the
reference's objective ``r_i`` and the controller's ``x_i`` (lower is better), and

* the per-seed relative **saving** is ``s_i = (r_i - x_i) / r_i`` (positive: the controller is cheaper);
* its mean comes with a percentile-bootstrap 95% CI over seeds (:func:`scipy.stats.bootstrap`);
* the **probability of improvement** is ``P(x_i < r_i) + P(x_i = r_i) / 2``.

Across presets, :func:`aggregate` hands the per-seed savings (one column per preset) to rliable: the
interquartile mean (IQM), the optimality gap (``gamma = 1``: the mean shortfall from saving everything) and
rliable's probability of improvement over the reference, each with rliable's stratified-bootstrap CI.

Degenerate cases are reported as such: with fewer than two finite pairs the CI is ``(nan, nan)``, which the
report prints as n/a.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "PairedComparison", "aggregate", "mean_with_ci", "paired_comparison"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (``nan`` bounds when it cannot be estimated)."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedComparison:
    """A controller against the reference on the same seeds.

    Attributes:
        n: Seeds with a finite objective for both.
        mean: The controller's mean objective, with CI.
        saving: Mean per-seed relative saving ``(r - x) / r``, with CI.
        probability_of_improvement: ``P(x < r) + P(x = r) / 2`` over the seeds.
    """

    n: int
    mean: Estimate
    saving: Estimate
    probability_of_improvement: float


def mean_with_ci(values: np.ndarray, confidence: float = 0.95, reps: int = 2000, seed: int = 0) -> Estimate:
    """Mean of the finite ``values`` with a percentile-bootstrap CI (``nan`` bounds below two values).

    A percentile interval of a mean of non-negative values never reaches below 0.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Estimate(math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2 or np.all(x == x[0]):
        return Estimate(mean, math.nan, math.nan) if len(x) < 2 else Estimate(mean, mean, mean)
    from scipy import stats

    res = stats.bootstrap(
        (x,), np.mean, n_resamples=reps, confidence_level=confidence, method="percentile", random_state=seed
    )
    return Estimate(mean, float(res.confidence_interval.low), float(res.confidence_interval.high))


def paired_comparison(
    reference: np.ndarray, values: np.ndarray, confidence: float = 0.95, reps: int = 2000, seed: int = 0
) -> PairedComparison:
    """Compare ``values`` with ``reference`` seed by seed (both ``[n_seeds]``, lower is better).

    Raises:
        ValueError: If the arrays differ in shape or a reference value is not positive (a relative saving
            needs a positive reference).
    """
    r = np.asarray(reference, dtype=float)
    x = np.asarray(values, dtype=float)
    if r.shape != x.shape or r.ndim != 1:
        raise ValueError(f"reference and values must be 1-D arrays of one shape, got {r.shape} and {x.shape}")
    both = np.isfinite(r) & np.isfinite(x)
    r, x = r[both], x[both]
    if np.any(r <= 0):
        raise ValueError(f"reference: a relative saving needs positive objectives, got {r[r <= 0].tolist()}")
    savings = (r - x) / r
    improvement = float(np.mean(x < r) + 0.5 * np.mean(x == r)) if len(r) else math.nan
    return PairedComparison(
        n=len(r),
        mean=mean_with_ci(x, confidence, reps, seed),
        saving=mean_with_ci(savings, confidence, reps, seed),
        probability_of_improvement=improvement,
    )


def aggregate(
    savings: Mapping[str, np.ndarray], reference: str, reps: int = 2000, seed: int = 0
) -> dict[str, dict[str, Estimate]]:
    """Aggregates of per-seed savings across presets, computed by rliable.

    Args:
        savings: Controller name -> ``[n_seeds, n_presets]`` per-seed savings against the reference (the
            same seeds and presets for every controller; the reference's own savings are 0).
        reference: The reference controller's name (for the probability of improvement).
        reps: Bootstrap resamples.
        seed: Seed of the bootstrap.

    Returns:
        Controller name -> ``{"iqm", "optimality_gap", "probability_of_improvement"}`` estimates.

    Raises:
        KeyError: If ``reference`` is not in ``savings``.
    """
    from rliable import library as rly
    from rliable import metrics

    if reference not in savings:
        raise KeyError(f"reference {reference!r} is not among the controllers: {', '.join(savings)}")
    scores = {name: np.asarray(v, dtype=float) for name, v in savings.items()}
    np.random.seed(seed)  # rliable's bootstrap draws from NumPy's global generator

    def _aggregates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_optimality_gap(x, 1.0)])

    points, intervals = rly.get_interval_estimates(scores, _aggregates, reps=reps)
    pairs = {f"{name},{reference}": (scores[name], scores[reference]) for name in scores if name != reference}
    poi_points, poi_intervals = (
        rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps) if pairs else ({}, {})
    )
    out: dict[str, dict[str, Estimate]] = {}
    for name in scores:
        point, interval = points[name], intervals[name]
        result = {
            "iqm": Estimate(float(point[0]), float(interval[0, 0]), float(interval[1, 0])),
            "optimality_gap": Estimate(float(point[1]), float(interval[0, 1]), float(interval[1, 1])),
        }
        key = f"{name},{reference}"
        if key in poi_points:
            p, ci = poi_points[key], np.ravel(poi_intervals[key])
            result["probability_of_improvement"] = Estimate(float(p), float(ci[0]), float(ci[1]))
        out[name] = result
    return out
