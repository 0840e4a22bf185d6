"""Benchmark plots: the episode objective per controller, and accuracy vs round and vs uploaded bytes.

* ``<env>__objective.png``: every episode's objective (``info["objective"]``, lower is better) as a dot, and
  per controller the mean with its bootstrap 95% CI as a bar; the x axis names the objective and its unit
  (:data:`~qflgym.envs.objectives.OBJECTIVE_LABELS`).
* ``<env>__accuracy_vs_{round,bytes}.png``: from the per-round table ``curves.csv``, the mean over the episodes
  **still running** at each point, with the t-distribution 95% CI band over them. Episodes end at different
  rounds (a target, a stop, a budget), so a controller's line ends where half of its episodes have ended (its
  median episode length): a line does not run on flat after the episodes it averages are over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qflgym.agents.evaluation.stats import mean_ci

__all__ = ["plot_accuracy_vs_bytes", "plot_accuracy_vs_round", "plot_objective", "plot_suite"]


def _episode_matrix(curves: pd.DataFrame, x: str, grid: np.ndarray, y: str) -> np.ndarray:
    """Rows: episodes; columns: ``y`` as a step function of ``x`` on ``grid``, NaN after the episode's end."""
    rows = []
    for _, ep in curves.groupby(["seed", "episode"], sort=True):
        ep = ep.sort_values("round")
        xs, ys = ep[x].to_numpy(float), ep[y].to_numpy(float)
        idx = np.searchsorted(xs, grid, side="right") - 1
        row = np.where(idx >= 0, ys[np.clip(idx, 0, None)], ys[0])
        rows.append(np.where(grid <= xs[-1], row, np.nan))
    return np.array(rows)


def _running_mean_ci(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and CI half-width over the episodes still running; the mask of points where at least half run."""
    running = ~np.isnan(mat)
    shown = running.sum(axis=0) * 2 >= mat.shape[0]
    mean, half = np.full(mat.shape[1], np.nan), np.full(mat.shape[1], np.nan)
    for j in np.flatnonzero(shown):
        mean[j], half[j] = (float(v) for v in mean_ci(mat[running[:, j], j]))
    return mean, half, shown


def _plot(curves: pd.DataFrame, x: str, xlabel: str, title: str, path: Path, y: str, ylabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    hi = float(curves[x].max()) if len(curves) else 1.0
    grid = np.arange(0, int(hi) + 1) if x == "round" else np.linspace(0.0, hi, 200)
    for controller, group in curves.groupby("controller", sort=False):
        mat = _episode_matrix(group, x, grid, y)
        mean, half, _ = _running_mean_ci(mat)
        (line,) = ax.plot(grid, mean, label=f"{controller} (n={mat.shape[0]})", lw=1.6)
        low, high = mean - half, mean + half
        if y.endswith("accuracy"):
            low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, lw=0)
    if y.endswith("accuracy"):
        ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    caption = "mean over the episodes still running; band: 95% CI; a line ends at its median length"
    ax.set_title(f"{title}\n{caption}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_objective(rows: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Each controller's episode objectives (dots) and their mean with a bootstrap 95% CI (bar); returns ``path``.

    Args:
        rows: Per-episode rows with ``controller``, ``objective`` and ``objective_name`` columns.
        path: The PNG to write.
        title: Plot title (the env).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from qflgym.agents.evaluation.paired import mean_with_ci
    from qflgym.envs.objectives import OBJECTIVE_LABELS

    controllers = list(dict.fromkeys(rows["controller"]))
    fig, ax = plt.subplots(figsize=(7.2, 0.5 * len(controllers) + 1.6), dpi=120)
    jitter = np.random.default_rng(0)
    for i, controller in enumerate(controllers):
        values = rows.loc[rows["controller"] == controller, "objective"].to_numpy(float)
        finite = values[np.isfinite(values)]
        ax.scatter(finite, i + jitter.uniform(-0.18, 0.18, finite.size), s=9, alpha=0.35, color="0.4", lw=0)
        if finite.size:
            est = mean_with_ci(finite)
            ax.errorbar(
                est.value,
                i,
                xerr=[[est.value - est.low], [est.high - est.value]],
                fmt="o",
                color="C0",
                capsize=4,
                lw=2,
                ms=6,
            )
    names = set(rows.get("objective_name", pd.Series(dtype=str)).dropna())
    name = names.pop() if len(names) == 1 else None
    ax.set_yticks(range(len(controllers)), [f"{c} (n={int((rows['controller'] == c).sum())})" for c in controllers])
    ax.invert_yaxis()
    ax.set_xlabel(OBJECTIVE_LABELS.get(name, "episode objective"), fontsize=9)
    ax.set_title(f"{title} (lower is better)\ndots: episodes; bar: mean and bootstrap 95% CI over episodes", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_accuracy_vs_round(curves: pd.DataFrame, path: Path, title: str = "", y: str = "accuracy") -> Path:
    """Accuracy vs round, mean and 95% CI per controller; returns ``path``."""
    return _plot(curves, "round", "round", title or "accuracy vs round", path, y, y.replace("_", " "))


def plot_accuracy_vs_bytes(curves: pd.DataFrame, path: Path, title: str = "", y: str = "accuracy") -> Path:
    """Accuracy vs cumulative uploaded bytes (kB or MB), mean and 95% CI per controller; returns ``path``."""
    scale, unit = (1e6, "MB") if float(curves["bytes_uploaded"].max()) >= 1e6 else (1e3, "kB")
    curves = curves.assign(uploaded=curves["bytes_uploaded"] / scale)
    label = y.replace("_", " ")
    return _plot(curves, "uploaded", f"uploaded {unit}", title or "accuracy vs uploaded bytes", path, y, label)


def plot_suite(
    curves: pd.DataFrame, out_dir: Path, y: str = "accuracy", rows: pd.DataFrame | None = None
) -> list[Path]:
    """The plots of every env of a benchmark.

    Files: ``<env>__objective.png`` (with ``rows``), then ``<env>__accuracy_vs_{round,bytes}.png``.
    """
    paths = []
    for env, group in curves.groupby("env", sort=False):
        slug = str(env).replace("/", "-")
        if rows is not None and "objective" in rows:
            paths.append(plot_objective(rows[rows["env"] == env], out_dir / f"{slug}__objective.png", f"{env}"))
        paths.append(plot_accuracy_vs_round(group, out_dir / f"{slug}__accuracy_vs_round.png", f"{env}", y))
        paths.append(plot_accuracy_vs_bytes(group, out_dir / f"{slug}__accuracy_vs_bytes.png", f"{env}", y))
    return paths
