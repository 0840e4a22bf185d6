"""How agents run qflgym envs: building them by id (:func:`make_env`, :func:`make_vec_env`) and thread limits.

The simulator evaluates small circuits (a few qubits, a few clients) and SB3 trains small MLPs: with more than
one torch/BLAS thread per process, the threads mostly wait on each other, and on a busy machine they slow a
round down (``benchmarks/env_speed.py`` and ``benchmarks/train_speed.py`` measure it on yours). Every long job
therefore runs with one thread per process and parallelizes across processes instead (vectorized envs, Ray
tasks).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qflgym.config import ConfigError

__all__ = ["check_env_id", "limited_threads", "make_env", "make_thread_limited_env", "make_vec_env"]


@contextmanager
def limited_threads(n: int | None = 1) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads and ``n`` BLAS threads; restore both afterwards.

    Args:
        n: Threads, or None to leave the libraries' defaults.
    """
    if n is None:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


def make_thread_limited_env(
    env_id: str, env_config: dict[str, Any] | None = None, threads: int | None = 1, **kwargs: Any
) -> Any:
    """``gym.make`` a qflgym env after limiting this process's torch and BLAS threads (for env subprocesses).

    Used as the env factory of vectorized envs, so each ``SubprocVecEnv`` worker runs single-threaded; in the
    main process the trainer's :func:`limited_threads` block already applies the same limit.
    """
    if threads is not None:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(limits=threads, user_api="blas")
    return make_env(env_id, env_config, **kwargs)


def make_env(env_id: str, env_config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """``gym.make`` a qflgym env (registering the suite first), with ``config=`` overrides when given.

    Raises:
        gymnasium.error.Error: Unknown env id (Gymnasium's message suggests close names).
    """
    import gymnasium as gym

    import qflgym.envs  # noqa: F401 -- registers the QFL/ ids

    if env_config:
        kwargs["config"] = dict(env_config)
    return gym.make(env_id, **kwargs)


def check_env_id(env_id: str) -> None:
    """Raise a ``ConfigError`` naming the closest and all registered QFL ids when ``env_id`` is not registered."""
    import gymnasium as gym

    import qflgym.envs  # noqa: F401

    if env_id not in gym.registry:
        qfl = sorted(k for k in gym.registry if k.startswith("QFL/"))
        close = difflib.get_close_matches(env_id, qfl, n=3, cutoff=0.8)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown env id {env_id!r}{hint}; registered qflgym envs: {', '.join(qfl)}")


def make_vec_env(
    env_id: str,
    n_envs: int,
    seed: int,
    env_config: dict[str, Any] | None = None,
    vec_env: str = "dummy",
    threads: int | None = 1,
) -> Any:
    """SB3's ``make_vec_env`` for a qflgym id: ``n_envs`` Monitor-wrapped envs seeded ``seed + i``.

    With ``vec_env="subproc"`` every worker process limits itself to ``threads`` torch/BLAS threads;
    ``vec_env="batched"`` steps all envs in one process with their rounds batched
    (:class:`qflgym.envs.sb3_vec_env.BatchedVecEnv` in ``VecMonitor``).
    """
    from functools import partial

    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    if vec_env == "batched":  # one process, every sub-env's round in shared simulator calls
        from stable_baselines3.common.vec_env import VecMonitor

        from qflgym.envs.sb3_vec_env import BatchedVecEnv

        batched = BatchedVecEnv(env_id, n_envs, env_config)
        batched.seed(seed)
        return VecMonitor(batched)
    subproc = vec_env == "subproc"
    factory = partial(make_thread_limited_env, env_id, dict(env_config or {}), threads if subproc else None)
    return sb3_make_vec_env(
        factory,
        n_envs=n_envs,
        seed=seed,
        env_kwargs={"render_mode": None},
        vec_env_cls=SubprocVecEnv if subproc else DummyVecEnv,
    )
