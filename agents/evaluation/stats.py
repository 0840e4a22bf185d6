"""Statistics over evaluated episodes: means with t-distribution confidence intervals."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["mean_ci"]


def mean_ci(values: np.ndarray, axis: int = 0, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the t-distribution confidence interval along ``axis`` (NaNs ignored).

    With fewer than two finite values the half-width is 0.
    """
    from scipy import stats

    values = np.asarray(values, dtype=float)
    n = np.sum(np.isfinite(values), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as intended
        mean = np.nanmean(values, axis=axis) if values.size else np.full(np.shape(n), np.nan)
        std = np.nanstd(values, axis=axis, ddof=1) if values.size else np.full(np.shape(n), np.nan)
        t = stats.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1))
        half = np.where(n >= 2, t * std / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, half
