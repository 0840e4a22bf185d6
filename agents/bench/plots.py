"""Benchmark plots: accuracy vs round and vs uploaded bytes, one line per controller with a 95% CI band.

Curves come from the per-round table ``curves.csv`` written by the benchmark. Episodes have different lengths
(a target or a stop ends them early): after its last round an episode keeps its last accuracy, so the mean at
round ``t`` is over every episode of the controller. The band is the t-distribution 95% confidence interval
of that mean over episodes (seeds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qflgym.agents.evaluation.stats import mean_ci

__all__ = ["plot_accuracy_vs_bytes", "plot_accuracy_vs_round", "plot_suite"]


def _episode_matrix(curves: pd.DataFrame, x: str, grid: np.ndarray, y: str) -> np.ndarray:
    """Rows: episodes; columns: ``y`` as a step function of ``x`` on ``grid`` (carried forward)."""
    rows = []
    for _, ep in curves.groupby(["seed", "episode"], sort=True):
        ep = ep.sort_values("round")
        xs, ys = ep[x].to_numpy(float), ep[y].to_numpy(float)
        idx = np.searchsorted(xs, grid, side="right") - 1
        rows.append(np.where(idx >= 0, ys[np.clip(idx, 0, None)], ys[0]))
    return np.array(rows)


def _plot(curves: pd.DataFrame, x: str, xlabel: str, title: str, path: Path, y: str, ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    hi = float(curves[x].max()) if len(curves) else 1.0
    grid = np.arange(0, int(hi) + 1) if x == "round" else np.linspace(0.0, hi, 200)
    for controller, group in curves.groupby("controller", sort=False):
        mat = _episode_matrix(group, x, grid, y)
        mean, half = mean_ci(mat, axis=0)
        (line,) = ax.plot(grid, mean, label=f"{controller} (n={mat.shape[0]})", lw=1.6)
        low, high = mean - half, mean + half
        if y.endswith("accuracy"):
            low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, lw=0)
    if y.endswith("accuracy"):
        ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy_vs_round(curves: pd.DataFrame, path: Path, title: str = "", y: str = "accuracy") -> Path:
    """Accuracy vs round, mean and 95% CI per controller; returns ``path``."""
    return _plot(curves, "round", "round", title or "accuracy vs round", path, y, y.replace("_", " "))


def plot_accuracy_vs_bytes(curves: pd.DataFrame, path: Path, title: str = "", y: str = "accuracy") -> Path:
    """Accuracy vs cumulative uploaded bytes (kB or MB), mean and 95% CI per controller; returns ``path``."""
    scale, unit = (1e6, "MB") if float(curves["bytes_uploaded"].max()) >= 1e6 else (1e3, "kB")
    curves = curves.assign(uploaded=curves["bytes_uploaded"] / scale)
    label = y.replace("_", " ")
    return _plot(curves, "uploaded", f"uploaded {unit}", title or "accuracy vs uploaded bytes", path, y, label)


def plot_suite(curves: pd.DataFrame, out_dir: Path, y: str = "accuracy") -> list[Path]:
    """Both plots for every env of a benchmark; files ``<env>__accuracy_vs_{round,bytes}.png``."""
    paths = []
    for env, group in curves.groupby("env", sort=False):
        slug = str(env).replace("/", "-")
        paths.append(plot_accuracy_vs_round(group, out_dir / f"{slug}__accuracy_vs_round.png", f"{env}", y))
        paths.append(plot_accuracy_vs_bytes(group, out_dir / f"{slug}__accuracy_vs_bytes.png", f"{env}", y))
    return paths
