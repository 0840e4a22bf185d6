"""Flower runs as ``qflgym bench`` tasks: the same rows, curves, tables and plots, from a Flower simulation.

:func:`run_flower_task` runs one :class:`~qflgym.agents.bench.tasks.Task` (controller, env, seed) through
:func:`~.simulation.run_flower` instead of the env and returns the :class:`~qflgym.agents.bench.tasks.TaskResult`
that ``bench`` would have produced; :func:`~qflgym.agents.bench.run.write_results` writes them.
"""

from __future__ import annotations

from typing import Any

from qflgym.agents.bench.tasks import Task, TaskResult
from qflgym.agents.evaluation import episode_metrics

from .simulation import run_flower

__all__ = ["run_flower_task"]


def run_flower_task(task: Task, backend: str = "ray", num_cpus: int | None = None) -> TaskResult:
    """Run ``task`` (one episode of its seed) as a Flower simulation.

    Args:
        task: The bench task; ``episodes`` must be 1 (a Flower run is one episode).
        backend: ``"ray"`` (Flower's simulation engine) or ``"local"`` (in this process).
        num_cpus: CPUs of the local Ray instance.

    Raises:
        ValueError: If the task asks for more than one episode.
    """
    from qflgym.agents.controllers import make_controller

    if task.episodes != 1:
        raise ValueError(f"episodes_per_seed: a Flower run is one episode per seed, got {task.episodes}")
    entry = task.controller

    def controller(env: Any) -> Any:
        return make_controller(entry.registry_name, env, seed=task.seed, **entry.kwargs)

    strategy = run_flower(
        task.env.id,
        controller,
        env_config=task.env.config,
        seed=task.seed,
        backend=backend,
        num_cpus=num_cpus,
        deterministic=entry.deterministic,
    )
    target = task.env.target if task.env.target is not None else strategy.env.config.target_accuracy
    base = {
        "suite": task.suite,
        "controller": entry.name,
        "env": task.env.name,
        "env_id": task.env.id,
        "seed": task.seed,
        "budget": int(strategy.env.config.round_budget),  # what the env reports as spec.max_episode_steps
        "episode": 0,
    }
    episode = strategy.episode
    return TaskResult(
        rows=[{**base, **episode_metrics(episode, target)}],
        curves=[{**base, **record} for record in episode.trace],
    )
