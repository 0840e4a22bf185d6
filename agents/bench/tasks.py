"""Benchmark tasks: one (controller, env, seed) of a suite, and :func:`run_task`, what every executor runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qflgym.agents.bench.suite import BenchSuite, ControllerEntry, EnvEntry
from qflgym.agents.controllers.base import make_controller
from qflgym.agents.evaluation.episodes import run_episode
from qflgym.agents.evaluation.metrics import env_target, episode_metrics
from qflgym.agents.runtime import limited_threads, make_env

__all__ = ["Task", "TaskResult", "run_task", "tasks_of"]


@dataclass(frozen=True)
class Task:
    """One (controller, env, seed) of a suite: everything a worker needs, picklable."""

    suite: str
    controller: ControllerEntry
    env: EnvEntry
    seed: int
    episodes: int
    torch_threads: int = 1


@dataclass
class TaskResult:
    """Rows of one task: one per episode, and the per-round curves."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)


def tasks_of(suite: BenchSuite) -> list[Task]:
    """Every task of ``suite``, controller-major."""
    tasks = []
    for c in suite.controllers:
        for e in suite.envs:
            if c.envs is not None and e.name not in c.envs and e.id not in c.envs:
                continue
            for seed in suite.seeds:
                tasks.append(Task(suite.name, c, e, seed, suite.episodes_per_seed, suite.executor.torch_threads))
    return tasks


def run_task(task: Task) -> TaskResult:
    """Run one task in this process (what a Ray worker executes), with ``torch_threads`` torch/BLAS threads."""
    with limited_threads(task.torch_threads):
        return _run_task(task)


def _run_task(task: Task) -> TaskResult:
    env = make_env(task.env.id, task.env.config)
    try:
        controller = make_controller(task.controller.registry_name, env, seed=task.seed, **task.controller.kwargs)
        target = task.env.target if task.env.target is not None else env_target(env)
        result = TaskResult()
        base = {
            "suite": task.suite,
            "controller": task.controller.name,
            "env": task.env.name,
            "env_id": task.env.id,
            "seed": task.seed,
        }
        spec = getattr(env, "spec", None)
        budget = getattr(spec, "max_episode_steps", None)
        base["budget"] = float("nan") if budget is None else int(budget)
        objective_name = getattr(getattr(env.unwrapped, "config", None), "objective", None)
        for episode_index in range(task.episodes):
            ep = run_episode(
                env,
                controller,
                seed=task.seed if episode_index == 0 else None,
                deterministic=task.controller.deterministic,
            )
            row = {**base, "objective_name": objective_name, "episode": episode_index, **episode_metrics(ep, target)}
            result.rows.append(row)
            for rec in ep.trace:
                result.curves.append({**base, "episode": episode_index, **rec})
        return result
    finally:
        env.close()
