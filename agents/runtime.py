"""Thread limits for training and evaluation processes.

The simulator evaluates small circuits (a few qubits, a few clients) and SB3 trains small MLPs: with more than
one torch/BLAS thread per process, the threads mostly wait on each other, and on a busy machine they slow a
round down by an order of magnitude (measured: ~125 ms instead of ~3 ms per env step with torch's default
threads while other jobs ran). Every long job therefore runs with one thread per process and parallelizes
across processes instead (vectorized envs, Ray tasks).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["limited_threads", "make_thread_limited_env"]


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
    from qflgym.agents.sb3_training import make_env

    return make_env(env_id, env_config, **kwargs)
