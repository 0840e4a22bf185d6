"""The env side of a Flower run: a qflgym env that observes Flower instead of simulating the federation.

:func:`mirror_env` builds the env registered as ``env_id`` (same class, config, observation layout, action codec,
rewards) whose federation is a :class:`FederationMirror`: a ``Federation``-shaped object filled from what the
Flower server knows -- client properties for the static features, and one
:class:`~qflgym.qfl_core.federation.RoundReport` per round assembled from the clients' train replies and the
central evaluation. The env then computes observations, rewards and termination with its own code, so the
controller sees exactly what it would see on the env (same features, same scaling, same clipping).

Only these members of ``Federation`` are used by the env, and the mirror provides them: ``config``, ``seed``,
``n_classes``, ``client_stats``, ``profiles``, ``spec``, ``executions_per_sample``, ``param_bytes``,
``available``, ``evaluate()`` and ``run_round()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.clients import DeviceProfile
from qflgym.qfl_core.config import FederationConfig
from qflgym.qfl_core.federation import RoundReport
from qflgym.qfl_core.partition import client_statistics

from .protocol import ClientInfo

__all__ = ["FederationMirror", "mirror_env"]

#: The profile of a client the server has not heard from (it is masked as unavailable).
_UNKNOWN_PROFILE = DeviceProfile(shots=None, depolarizing=0.0, readout_error=0.0, latency_s=0.0, availability=0.0)


class FederationMirror:
    """A ``Federation`` stand-in whose rounds are run by Flower.

    Args:
        config: The federation config of the env (model, training defaults, ``server_time_s``).
        seed: The federation seed of the run.
        n_clients: N, the clients of the controller's observation.
        clients: What the server knows about each client, by client id.
        param_bytes: Bytes of one model transfer.
        evaluation: Central evaluation of the initial model (``val_accuracy``, ``val_loss``, ``test_*``).
    """

    def __init__(
        self,
        config: FederationConfig,
        seed: int,
        n_clients: int,
        clients: Mapping[int, ClientInfo],
        param_bytes: int,
        evaluation: Mapping[str, float],
    ) -> None:
        self.config = config
        self.seed = int(seed)
        self.n_clients = int(n_clients)
        self.param_bytes = int(param_bytes)
        self.available = np.zeros(self.n_clients, dtype=bool)
        self._evaluation = dict(evaluation)
        self._pending: RoundReport | None = None
        self.set_clients(clients)

    def set_clients(self, clients: Mapping[int, ClientInfo]) -> None:
        """Rebuild the per-client statistics and profiles from ``clients`` (unknown clients: no data).

        Raises:
            ValueError: If a client id is outside ``[0, N)``, no client is known, or the label histograms
                disagree on the number of classes.
        """
        bad = sorted(c for c in clients if not 0 <= c < self.n_clients)
        if bad:
            raise ValueError(f"client-id: must be in [0, {self.n_clients - 1}], got {bad}")
        if not clients:
            raise ValueError("no client answered the properties query; the observation needs at least one")
        n_classes = {len(info.label_histogram) for info in clients.values()}
        if len(n_classes) != 1:
            raise ValueError(f"label-histogram: every client must report the same K classes, got lengths {n_classes}")
        self.n_classes = n_classes.pop()
        hist = np.zeros((self.n_clients, self.n_classes), dtype=np.int64)
        for cid, info in clients.items():
            hist[cid] = info.label_histogram
        # client_statistics works on labels and index shards: lay the histograms out as such.
        labels = np.repeat(np.tile(np.arange(self.n_classes), self.n_clients), hist.reshape(-1))
        bounds = np.concatenate([[0], np.cumsum(hist.sum(axis=1))])
        parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(self.n_clients)]
        self.client_stats = client_statistics(labels, parts, self.n_classes)
        self.profiles = [clients[i].profile if i in clients else _UNKNOWN_PROFILE for i in range(self.n_clients)]
        self.spec = CircuitSpec.from_config(self.config.circuit, self.n_classes)

    @property
    def executions_per_sample(self) -> int:
        """Circuit executions per training sample, as :attr:`Federation.executions_per_sample` counts them."""
        return 1 + 2 * self.spec.n_circuit_params

    def evaluate(self) -> dict[str, float]:
        """The central evaluation of the current global model (set by the strategy)."""
        return dict(self._evaluation)

    def expect_round(self, report: RoundReport) -> None:
        """Make ``report`` the result of the next :meth:`run_round` (the round Flower just ran)."""
        self._pending = report
        self._evaluation = {
            "val_accuracy": report.val_accuracy,
            "val_loss": report.val_loss,
            "test_accuracy": report.test_accuracy,
            "test_loss": report.test_loss,
        }

    def run_round(self, selected: Any, lr: float | None = None, local_steps: int | None = None) -> RoundReport:
        """Return the round Flower ran (the env calls this from ``step``).

        Raises:
            RuntimeError: If no round is pending, or the env asks for another selection, lr or local steps
                than the ones Flower ran with.
        """
        report, self._pending = self._pending, None
        ids = np.asarray(selected)
        ids = tuple(np.flatnonzero(ids).tolist() if ids.dtype == bool else sorted(ids.tolist()))
        if report is None or (ids, lr, local_steps) != (report.selected, report.lr, report.local_steps):
            ran = None if report is None else (report.selected, report.lr, report.local_steps)
            raise RuntimeError(f"the env asked for round {(ids, lr, local_steps)} but Flower ran {ran}")
        return report


class _Mirrored:
    """Mixin: a QFL env whose ``federation`` is the :class:`FederationMirror` returned by ``mirror_source``."""

    mirror_source: Callable[[int], FederationMirror] | None = None

    def _start_federation(self, seed: int) -> None:
        if self.mirror_source is None:
            raise RuntimeError("mirror_source is not set: the ControlledStrategy sets it before reset")
        self.federation = self.mirror_source(seed)
        self._fed_seed = seed
        self.refresh_static_features()


def mirror_env(env_id: str, env_config: Mapping[str, Any] | None = None) -> Any:
    """The env ``env_id`` (with ``env_config`` overrides), running on a :class:`FederationMirror`.

    Raises:
        ValueError: Naming the registered ids when ``env_id`` is unknown.
    """
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    from qflgym.agents.runtime import check_env_id

    check_env_id(env_id)
    spec = gym.spec(env_id)
    cls = load_env_creator(spec.entry_point)
    mirrored = type(f"FlowerMirror{cls.__name__}", (_Mirrored, cls), {})
    kwargs = dict(spec.kwargs)
    if env_config:
        kwargs["config"] = dict(env_config)
    return mirrored(**kwargs)
