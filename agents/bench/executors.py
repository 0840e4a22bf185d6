"""Where benchmark tasks run: in this process (:func:`run_serial`) or as Ray remote functions (:func:`run_ray`).

Ray runs a local instance by default, or joins the cluster at ``RAY_ADDRESS``. A cluster started with
``ray start --head`` uses token authentication by default in recent Ray releases: the driver then needs the
cluster's token (see :data:`RAY_AUTH_HINT` and the README's cluster section).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from qflgym.agents.bench.tasks import Task, TaskResult, run_task
from qflgym.config import ConfigError

__all__ = ["EXECUTORS", "RAY_AUTH_HINT", "ClusterConnectionError", "executor_record", "run_ray", "run_serial"]

#: How to fix a refused connection to a Ray cluster (the usual cause: token authentication).
RAY_AUTH_HINT = (
    "if the cluster uses token authentication (the default of `ray start --head`), export RAY_AUTH_MODE=token "
    "and make its token available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; print it on the head "
    "node with `ray get-auth-token`), or start the cluster with RAY_AUTH_MODE=disabled; unset RAY_ADDRESS to run "
    "on a local Ray instance instead"
)


class ClusterConnectionError(ConfigError):
    """The Ray cluster at ``RAY_ADDRESS`` could not be joined: a set-up error, and the message names the fix."""


def executor_record(kind: str) -> dict[str, Any]:
    """What a run folder records about its executor: the kind and, for Ray, the cluster address (or ``local``)."""
    if kind != "ray":
        return {"kind": kind}
    return {"kind": kind, "ray_address": os.environ.get("RAY_ADDRESS") or "local"}


def _connect(num_cpus: int | None) -> None:
    """``ray.init`` a local instance, or join ``RAY_ADDRESS`` with a one-line error when that fails."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if not address:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        return
    refused = (ConnectionError, getattr(ray.exceptions, "AuthenticationError", ConnectionError))
    try:
        ray.init(log_to_driver=False)
    except refused as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterConnectionError(
            f"cannot join the Ray cluster at RAY_ADDRESS={address} ({first_line[:200]}); {RAY_AUTH_HINT}"
        ) from None


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="bench", unit="task", disable=not enabled, dynamic_ncols=True)


def run_serial(tasks: Sequence[Task], progress: bool = True) -> list[TaskResult]:
    """Run tasks one after another in this process."""
    results = []
    with _progress(len(tasks), progress) as bar:
        for task in tasks:
            bar.set_postfix_str(f"{task.controller.name} · {task.env.name} · seed {task.seed}")
            results.append(run_task(task))
            bar.update()
    return results


def run_ray(tasks: Sequence[Task], num_cpus: int | None = None, progress: bool = True) -> list[TaskResult]:
    """Run tasks as Ray remote functions, in submission order of the results.

    Starts a local Ray instance (``num_cpus`` CPUs, no dashboard) unless one is running in this process or
    ``RAY_ADDRESS`` names a cluster to join; a local instance started here is shut down afterwards.

    Raises:
        ClusterConnectionError: The cluster at ``RAY_ADDRESS`` refused or timed out the connection.
    """
    import ray

    started = False
    if not ray.is_initialized():
        _connect(num_cpus)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        refs = [remote.remote(task) for task in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[TaskResult | None] = [None] * len(refs)
        pending = list(refs)
        with _progress(len(refs), progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[index[ref]] = ray.get(ref)
                    bar.update()
        return [r for r in results if r is not None]
    finally:
        if started:
            ray.shutdown()


EXECUTORS: dict[str, Callable[..., list[TaskResult]]] = {"serial": run_serial, "ray": run_ray}
