"""The headline numbers of an evaluated episode (:func:`episode_metrics`).

Conventions:

* ``accuracy`` is the global model's **test** accuracy when the federation evaluates the test split (the
  default), else its validation accuracy. The *target* is checked on the **validation** accuracy, as the envs
  do (the controller never sees test accuracy).
* ``rounds_to_target`` is the number of rounds run when the validation accuracy first reached the target;
  ``*_to_target`` are the cumulative costs at that round. They are NaN when the target was never reached.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from qflgym.agents.controllers.base import env_attr

if TYPE_CHECKING:
    from qflgym.agents.evaluation.episodes import Episode

__all__ = ["env_target", "episode_metrics"]


def env_target(env: Any) -> float | None:
    """The env's target validation accuracy, or None when it has none."""
    try:
        config = env_attr(env, "config")
    except AttributeError:
        return None
    value = config.get("target_accuracy") if isinstance(config, dict) else getattr(config, "target_accuracy", None)
    return None if value is None else float(value)


def episode_metrics(episode: Episode, target: float | None) -> dict[str, float]:
    """The headline numbers of one episode (see the module docstring for the conventions).

    Returns:
        ``return, rounds, final_accuracy, best_accuracy, final_val_accuracy, reached, rounds_to_target,
        bytes_to_target, wall_time_to_target, shots_to_target, total_bytes_uploaded, total_wall_time_s,
        total_shots, runtime_s`` plus the controller's extra metrics.
    """
    trace = episode.trace
    accs = np.array([r["accuracy"] for r in trace[1:]] or [trace[0]["accuracy"]], dtype=float)
    last = trace[-1]
    row: dict[str, float] = {
        "return": episode.total_return,
        "rounds": episode.rounds,
        "terminated": float(episode.terminated),
        "truncated": float(episode.truncated),
        "final_accuracy": float(last["accuracy"]),
        "best_accuracy": float(np.nanmax(accs)) if np.isfinite(accs).any() else math.nan,
        "final_val_accuracy": float(last["val_accuracy"]),
        "target": math.nan if target is None else float(target),
        "reached": 0.0,
        "rounds_to_target": math.nan,
        "bytes_to_target": math.nan,
        "wall_time_to_target": math.nan,
        "shots_to_target": math.nan,
        "total_bytes_uploaded": float(last["bytes_uploaded"]),
        "total_wall_time_s": float(last["wall_time_s"]),
        "total_shots": float(last["shots"]),
        "runtime_s": episode.runtime_s,
    }
    if target is not None:
        for rec in trace[1:]:
            if rec["val_accuracy"] >= target:
                row.update(
                    reached=1.0,
                    rounds_to_target=float(rec["round"]),
                    bytes_to_target=float(rec["bytes_uploaded"]),
                    wall_time_to_target=float(rec["wall_time_s"]),
                    shots_to_target=float(rec["shots"]),
                )
                break
    row.update(episode.extra)
    return row
