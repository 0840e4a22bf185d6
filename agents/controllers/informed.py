"""Informed, observation-only heuristics a QFL researcher would try, and the naive fixed-round stop.

Selectors (:data:`~qflgym.agents.controllers.selection.SELECTORS`):

* ``label-complement`` -- a cohort whose pooled label histogram is closest to the federation's;
* ``cost-aware`` -- the same greedy cohort, priced: the label mismatch plus the round's time (its slowest
  member), its shots and its members' device noise, in the env's objective units (v1 observation). Oort's
  statistical x system utility, made explicit for the operator's cost.

Step-size rule (:data:`~qflgym.agents.controllers.step_size.STEP_SIZE_RULES`): ``loss-reactive`` -- a
learning rate that backs off when the validation loss rises and grows back while it falls.

Termination rules (:data:`~qflgym.agents.controllers.termination.TERMINATION_RULES`): ``marginal-value``
-- stop once the recent accuracy gain no longer pays for the recent cost; ``fixed-round`` -- stop after a
fixed number of rounds (the naive baseline, tuned on training seeds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qflgym.agents.controllers.observations import EnvFacts, ObsView
from qflgym.agents.controllers.selection import SELECTORS, Selector
from qflgym.agents.controllers.step_size import STEP_SIZE_RULES, StepSizeRule
from qflgym.agents.controllers.termination import TERMINATION_RULES, TerminationRule
from qflgym.config import ConfigError
from qflgym.envs.observation import LABEL_FEATURES

__all__ = ["CostAware", "FixedRound", "LabelComplement", "LossReactive", "MarginalValue"]


def _non_negative(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not np.isfinite(value) or value < 0:
            raise ConfigError(f"{owner}.{name}: must be a finite number >= 0, got {value!r}")


@SELECTORS.register("label-complement")
class LabelComplement(Selector):
    """Grow a cohort greedily so its pooled label histogram is closest to the federation's.

    The distance is the total variation between the cohort's size-weighted label fractions and those of all
    clients (``label_frac_*`` x ``data_size``). Each of the ``k`` slots takes the available client that
    lowers the cohort's score most (ties at random); with ``adaptive`` the cohort stops growing once no
    client lowers it.

    Args:
        facts: The env's :class:`EnvFacts`.
        k: Most clients per round.
        adaptive: Stop before ``k`` clients when adding any client would raise the score.
    """

    def __init__(self, facts: EnvFacts, k: int | None = None, adaptive: bool = False) -> None:
        super().__init__(facts, k)
        self.adaptive = bool(adaptive)

    def costs(self, view: ObsView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-client ``(time, shots, member)`` terms of the score (zeros here: labels only).

        The cohort is priced with its slowest member's time, its summed shots and its members' mean ``member``.
        """
        zeros = np.zeros(self.n)
        return zeros, zeros, zeros

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """The greedy cohort (see the class docstring)."""
        available = np.flatnonzero(view.available())
        counts = np.stack([view.client(name) for name in LABEL_FEATURES], axis=1) * view.client("data_size")[:, None]
        target = counts.sum(axis=0) / max(counts.sum(), 1e-12)
        time, shots, noise = self.costs(view)
        chosen = np.zeros(self.n, dtype=bool)
        pooled = np.zeros_like(target)
        cohort_time = cohort_shots = cohort_noise = 0.0
        best_score = np.inf
        for size in range(1, min(self.k, len(available)) + 1):
            cand = available[~chosen[available]]
            hist = pooled[None, :] + counts[cand]
            mismatch = 0.5 * np.abs(hist / np.maximum(hist.sum(axis=1, keepdims=True), 1e-12) - target).sum(axis=1)
            score = (
                mismatch
                + np.maximum(cohort_time, time[cand])
                + cohort_shots
                + shots[cand]
                + (cohort_noise + noise[cand]) / size
            )
            low = score.min()
            if self.adaptive and size > 1 and low >= best_score:
                break
            pick = cand[rng.choice(np.flatnonzero(score == low))]
            best_score = low
            chosen[pick] = True
            pooled = pooled + counts[pick]
            cohort_time = max(cohort_time, time[pick])
            cohort_shots += shots[pick]
            cohort_noise += noise[pick]
        return chosen


@SELECTORS.register("cost-aware")
class CostAware(LabelComplement):
    """``label-complement`` priced with the round's cost and the cohort's device noise (v1 observation).

    Score of a cohort ``C`` (lower is better)::

        TV(labels of C, labels of all)
          + time_weight  x max_{i in C} step_time_i x local_steps      (the round lasts as long as its slowest)
          + shot_weight  x sum_{i in C} step_shot_cost_i x local_steps (shots add up)
          + noise_weight x mean_{i in C} (noise_level_i + shot_noise_i)
          - loss_weight  x mean_{i in C} last_loss_i                       (Oort's statistical utility)

    ``step_time`` and ``step_shot_cost`` are in units of the env's ``cost_scale``, so the weights price cost
    in label-mismatch points.

    Args:
        facts: The env's :class:`EnvFacts`.
        k: Most clients per round.
        adaptive: Stop growing the cohort once no client lowers its score (off by default: on
            ClientSelection-v1 the adaptive cohorts got stuck below the target on 12% of the seeds, see
            docs/results.md).
        time_weight: Price of one ``cost_scale`` of round time.
        shot_weight: Price of one ``cost_scale`` of shots.
        noise_weight: Price of the members' mean device and shot noise.
        loss_weight: Value of the members' mean ``last_loss`` (the global model's loss on a client when it last
            trained; 1 for a client never seen). 0, the default, scores a federation's static features and
            availability only, so the cohort repeats while they do; a positive weight prefers the clients the
            model fits worst (as Oort's statistical utility does), so a cohort that stops teaching the model
            gives way to others.

    Raises:
        ConfigError: If a weight is negative or not finite.
    """

    def __init__(
        self,
        facts: EnvFacts,
        k: int | None = None,
        adaptive: bool = False,
        time_weight: float = 1.0,
        shot_weight: float = 1.0,
        noise_weight: float = 0.5,
        loss_weight: float = 0.0,
    ) -> None:
        super().__init__(facts, k, adaptive)
        _non_negative(
            "cost-aware",
            time_weight=time_weight,
            shot_weight=shot_weight,
            noise_weight=noise_weight,
            loss_weight=loss_weight,
        )
        self.time_weight = float(time_weight)
        self.shot_weight = float(shot_weight)
        self.noise_weight = float(noise_weight)
        self.loss_weight = float(loss_weight)
        self.local_steps = facts.default_local_steps

    def costs(self, view: ObsView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-client ``(time, shots, member)`` terms, weighted (``member``: noise minus loss utility).

        Raises:
            ConfigError: If the observation lacks the v1 cost features.
        """
        if not view.has("step_time"):
            raise ConfigError("cost-aware needs the v1 observation (step_time, step_shot_cost): use a -v1 env")
        steps = self.local_steps
        time = self.time_weight * steps * view.client("step_time")
        shots = self.shot_weight * steps * view.client("step_shot_cost")
        noise = self.noise_weight * (view.client("noise_level") + view.client("shot_noise"))
        return time, shots, noise - self.loss_weight * view.client("last_loss")


@STEP_SIZE_RULES.register("loss-reactive")
class LossReactive(StepSizeRule):
    """A learning rate that reacts to the validation loss (an observation-only schedule).

    Starts at ``start`` x the env's lr; after a round whose validation loss rose by more than
    ``tolerance`` (in ``ln K`` units) the multiplier is multiplied by ``decay``; after ``patience``
    consecutive rounds of falling loss by ``growth``; it stays in ``[low, high]``. Local steps are fixed.

    Args:
        facts: The env's :class:`EnvFacts`.
        local_steps: Local steps per round (default: the env's).
        start: Initial lr multiplier.
        decay: Factor after a rise (``0 < decay <= 1``).
        growth: Factor after ``patience`` falls (``>= 1``).
        patience: Falling rounds before growing (``>= 1``).
        tolerance: Rise of the scaled validation loss that counts as a rise (``>= 0``).
        low: Smallest multiplier.
        high: Largest multiplier.

    Raises:
        ConfigError: Naming the field for an out-of-range option.
    """

    def __init__(
        self,
        facts: EnvFacts,
        local_steps: int | None = None,
        start: float = 1.0,
        decay: float = 0.5,
        growth: float = 1.25,
        patience: int = 3,
        tolerance: float = 0.0,
        low: float = 0.1,
        high: float = 10.0,
    ) -> None:
        super().__init__(facts, None, local_steps)
        _non_negative("loss-reactive", start=start, tolerance=tolerance, low=low, high=high)
        if not 0 < decay <= 1:
            raise ConfigError(f"loss-reactive.decay: must be in (0, 1], got {decay!r}")
        if not growth >= 1:
            raise ConfigError(f"loss-reactive.growth: must be >= 1, got {growth!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"loss-reactive.patience: must be an integer >= 1, got {patience!r}")
        if not 0 < low <= start <= high:
            raise ConfigError(f"loss-reactive.start: must be in [low={low}, high={high}] with low > 0, got {start!r}")
        self.start, self.decay, self.growth = float(start), float(decay), float(growth)
        self.patience, self.tolerance, self.low, self.high = patience, float(tolerance), float(low), float(high)
        self.base_lr = facts.default_lr

    def __call__(self, t: int, view: ObsView, memory: dict[str, Any]) -> tuple[float, int]:
        """``(lr, local_steps)`` for round ``t`` after the observed loss change."""
        multiplier = memory.get("lr_multiplier", self.start)
        if t > 0:
            change = view.global_("val_loss_change")
            if change > self.tolerance:
                multiplier, memory["falls"] = multiplier * self.decay, 0
            elif change < 0:
                memory["falls"] = memory.get("falls", 0) + 1
                if memory["falls"] >= self.patience:
                    multiplier, memory["falls"] = multiplier * self.growth, 0
        multiplier = min(max(multiplier, self.low), self.high)
        memory["lr_multiplier"] = multiplier
        return self.base_lr * multiplier, self.local_steps


@TERMINATION_RULES.register("marginal-value")
class MarginalValue(TerminationRule):
    """Stop once the recent accuracy gain no longer pays for the recent cost.

    Keeps exponential moving averages (factor ``smoothing``) of the per-round change of validation accuracy
    and of ``cost_spent`` (v1 observation); after ``min_rounds`` rounds it stops when
    ``ema(accuracy change) < price x ema(cost_spent change)``.

    Args:
        facts: The env's :class:`EnvFacts`.
        price: Accuracy points one unit of ``cost_spent`` is worth (``>= 0``).
        smoothing: EMA factor in ``(0, 1]`` (1: the last round only).
        min_rounds: Rounds before the rule may stop (``>= 1``).

    Raises:
        ConfigError: Naming the field for an out-of-range option.
    """

    def __init__(self, facts: EnvFacts, price: float = 1.0, smoothing: float = 0.2, min_rounds: int = 5) -> None:
        super().__init__(facts)
        _non_negative("marginal-value", price=price)
        if not 0 < smoothing <= 1:
            raise ConfigError(f"marginal-value.smoothing: must be in (0, 1], got {smoothing!r}")
        if isinstance(min_rounds, bool) or not isinstance(min_rounds, int) or min_rounds < 1:
            raise ConfigError(f"marginal-value.min_rounds: must be an integer >= 1, got {min_rounds!r}")
        self.price, self.smoothing, self.min_rounds = float(price), float(smoothing), min_rounds

    def __call__(self, view: ObsView, memory: dict[str, Any]) -> bool:
        """Whether to stop now."""
        if not view.has("cost_spent"):
            raise ConfigError("marginal-value needs the v1 observation (cost_spent): use a -v1 env")
        spent = view.global_("cost_spent")
        rounds = memory.get("rounds", 0)
        if rounds > 0:
            a = self.smoothing
            gain = view.global_("val_accuracy_change")
            cost = spent - memory["spent"]
            memory["gain"] = gain if rounds == 1 else (1 - a) * memory["gain"] + a * gain
            memory["cost"] = cost if rounds == 1 else (1 - a) * memory["cost"] + a * cost
        memory["rounds"], memory["spent"] = rounds + 1, spent
        return rounds >= self.min_rounds and memory["gain"] < self.price * memory["cost"]


@TERMINATION_RULES.register("fixed-round")
class FixedRound(TerminationRule):
    """Stop after a fixed number of rounds (the naive baseline; tune ``rounds`` on training seeds).

    Args:
        facts: The env's :class:`EnvFacts`.
        rounds: Rounds to run before stopping (``>= 1``).

    Raises:
        ConfigError: If ``rounds`` is not an integer >= 1.
    """

    def __init__(self, facts: EnvFacts, rounds: int = 30) -> None:
        super().__init__(facts)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"fixed-round.rounds: must be an integer >= 1, got {rounds!r}")
        self.rounds = rounds

    def __call__(self, view: ObsView, memory: dict[str, Any]) -> bool:
        """Whether ``rounds`` rounds have run."""
        memory["rounds"] = memory.get("rounds", -1) + 1
        return memory["rounds"] >= self.rounds
