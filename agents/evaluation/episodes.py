"""One evaluation loop for every controller: run episodes and record their per-round traces.

:func:`run_episode` drives one env with any object that has the ``predict`` protocol and returns an
:class:`Episode`: the per-round trace (accuracy, cumulative uploaded bytes, simulated wall time, shots,
reward). :func:`evaluate` runs one episode per seed and turns each into the metrics of
:mod:`qflgym.agents.evaluation.metrics`. Round 0 of a trace is the state after ``reset`` (initial accuracy, no
cost).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qflgym.agents.controllers.base import get_action_masks
from qflgym.agents.evaluation.metrics import env_target, episode_metrics

__all__ = ["Episode", "evaluate", "run_episode"]


@dataclass
class Episode:
    """One evaluated episode.

    Attributes:
        seed: The ``reset`` seed.
        total_return: Sum of rewards.
        rounds: Rounds run (env steps that ran a round).
        steps: Env steps taken.
        terminated: The episode ended by the task (stop or target).
        truncated: The episode hit the round budget.
        trace: Per-round records (round 0 = after reset) with keys ``round, accuracy, val_accuracy,
            test_accuracy, bytes_uploaded, bytes_total, wall_time_s, shots, cost, reward, participants, dropped``.
        runtime_s: Real seconds the episode took (simulation plus controller).
        extra: Controller-reported metrics (``controller.episode_metrics()``), e.g. an invalid-output rate.
        objective: The env's episode objective (``info["objective"]`` of the last step; lower is better).
    """

    seed: int | None
    total_return: float = 0.0
    rounds: int = 0
    steps: int = 0
    terminated: bool = False
    truncated: bool = False
    trace: list[dict[str, float]] = field(default_factory=list)
    runtime_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    objective: float = math.nan


def _num(info: dict[str, Any], *keys: str, default: float = math.nan) -> float:
    for key in keys:
        if key in info and info[key] is not None:
            try:
                return float(info[key])
            except (TypeError, ValueError):
                continue
    return default


class _Accumulator:
    """Turns the env's per-step ``info`` (and each ``RoundReport``) into cumulative per-round records."""

    def __init__(self) -> None:
        self.bytes_up = 0.0
        self.bytes_total = 0.0
        self.wall = 0.0
        self.shots = 0.0
        self.cost = 0.0

    def record(self, rnd: int, info: dict[str, Any], reward: float, report: Any = None) -> dict[str, float]:
        if rnd > 0:
            total = _num(info, "bytes", default=0.0)
            up = float(report.bytes_uploaded) if report is not None else _num(info, "bytes_uploaded", default=total)
            self.bytes_up += up
            self.bytes_total += total
            self.wall += _num(info, "wall_time_s", default=0.0)
            self.shots += _num(info, "shots", default=0.0)
            self.cost += _num(info, "cost", default=0.0)
        val = _num(info, "val_accuracy")
        test = _num(info, "test_accuracy")
        return {
            "round": rnd,
            "accuracy": test if math.isfinite(test) else val,
            "val_accuracy": val,
            "test_accuracy": test,
            "bytes_uploaded": self.bytes_up,
            "bytes_total": self.bytes_total,
            "wall_time_s": self.wall,
            "shots": self.shots,
            "cost": self.cost,
            "reward": reward,
            "participants": _num(info, "participants", default=0.0),
            "dropped": _num(info, "dropped", default=0.0),
        }


def run_episode(
    env: Any,
    controller: Any,
    seed: int | None = None,
    deterministic: bool = True,
    max_steps: int | None = None,
) -> Episode:
    """Run one episode of ``env`` under ``controller`` and record it.

    Args:
        env: A qflgym env (from ``gym.make``; wrappers allowed).
        controller: Anything with ``predict(obs, state, episode_start, deterministic)``.
        seed: ``reset`` seed.
        deterministic: Passed to ``predict``.
        max_steps: Safety cap on env steps (default: none beyond the env's own time limit).
    """
    start = time.perf_counter()
    obs, info = env.reset(seed=seed)
    acc = _Accumulator()
    episode = Episode(seed=seed)
    episode.trace.append(acc.record(0, info, 0.0))
    unwrapped = getattr(env, "unwrapped", env)
    uses_masks = bool(getattr(controller, "uses_action_masks", False))
    state: Any = None
    episode_start = np.ones(1, dtype=bool)
    while True:
        kwargs = {"action_masks": get_action_masks(env)} if uses_masks else {}
        action, state = controller.predict(
            obs, state=state, episode_start=episode_start, deterministic=deterministic, **kwargs
        )
        episode_start = np.zeros(1, dtype=bool)
        obs, reward, terminated, truncated, info = env.step(action)
        episode.steps += 1
        episode.total_return += float(reward)
        if not info.get("stopped", False):
            episode.rounds += 1
            report = getattr(unwrapped, "last_report", None)
            episode.trace.append(acc.record(episode.rounds, info, float(reward), report))
        elif episode.trace:
            episode.trace[-1]["reward"] += float(reward)
        if terminated or truncated or (max_steps is not None and episode.steps >= max_steps):
            episode.terminated, episode.truncated = bool(terminated), bool(truncated)
            episode.objective = _num(info, "objective")
            break
    metrics = getattr(controller, "episode_metrics", None)
    if callable(metrics):
        episode.extra = {str(k): float(v) for k, v in (metrics() or {}).items()}
    episode.runtime_s = time.perf_counter() - start
    return episode


def evaluate(
    env: Any,
    controller: Any,
    seeds: list[int],
    deterministic: bool = True,
    target: float | None = None,
) -> list[dict[str, float]]:
    """Run one episode per seed and return one metrics row per episode (with ``seed``)."""
    target = env_target(env) if target is None else target
    rows = []
    for seed in seeds:
        ep = run_episode(env, controller, seed=seed, deterministic=deterministic)
        rows.append({"seed": seed, **episode_metrics(ep, target)})
    return rows
