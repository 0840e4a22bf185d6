"""Exact snapshots of a QFL env: ``get_state`` / ``set_state``, and pickling through them.

A snapshot holds the federation's ``state_dict``, ``np_random``'s state and the env's episode bookkeeping, so
restoring it gives the same next step, bit for bit (used by planners, oracles and ``SubprocVecEnv``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["Snapshots"]

_STATE_VERSION = 2
#: The env's scalar bookkeeping, saved under the attribute name without its leading underscore.
_SCALARS: tuple[str, ...] = (
    "_val_acc",
    "_val_loss",
    "_prev_val_acc",
    "_prev_val_loss",
    "_total_bytes",
    "_total_time",
    "_total_shots",
    "_total_cost",
    "_last_cost",
    "_accuracy",
    "_last_lr",
    "_last_steps",
    "_steps",
    "_reached",
    "_episode_over",
)


class Snapshots:
    """Mixin of :class:`~qflgym.envs.base.QFLEnv`: exact snapshots and pickling."""

    def get_state(self) -> dict[str, Any]:
        """A snapshot from which :meth:`set_state` restores the env exactly (same next step, bit for bit).

        Covers the federation (its ``state_dict``), the env's bookkeeping and ``np_random``. Wrapper state
        (e.g. a ``TimeLimit`` added by ``gym.make(..., max_episode_steps=n)``) is not included; the env
        truncates at ``round_budget`` by itself.
        """
        if self.federation is None:
            raise RuntimeError(f"{type(self).__name__}: call reset() before get_state()")
        return {
            "version": _STATE_VERSION,
            "env": self._state_owner(),
            "federation_seed": self._fed_seed,
            "federation": copy.deepcopy(self.federation.state_dict()),
            "np_random": copy.deepcopy(self.np_random.bit_generator.state),
            "client_state": self.client_state.copy(),
            "update_norm": self._update_norm.copy(),
            "cosine": self._cosine.copy(),
            "scalars": {name[1:]: getattr(self, name) for name in _SCALARS},
            "history": list(self._history),
            "last_report": self.last_report,
            "last_decision": self.last_decision,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`get_state` snapshot (from this env or another of the same class, presets and config).

        Raises:
            ValueError: If the snapshot comes from another env class, presets or version.
        """
        owner = self._state_owner()
        if state.get("version") != _STATE_VERSION or state.get("env") != owner:
            raise ValueError(
                f"state was taken from {state.get('env')!r} (version {state.get('version')}), "
                f"not {owner!r} (version {_STATE_VERSION})"
            )
        self._start_federation(int(state["federation_seed"]))
        self.federation.load_state_dict(copy.deepcopy(state["federation"]))
        if self._np_random is None:
            self._np_random = np.random.Generator(np.random.PCG64())
        self._np_random.bit_generator.state = copy.deepcopy(state["np_random"])
        self.client_state = state["client_state"].copy()
        self._update_norm = state["update_norm"].copy()
        self._cosine = state["cosine"].copy()
        for name in _SCALARS:
            setattr(self, name, state["scalars"][name[1:]])
        self._history = list(state["history"])
        self.last_report = state["last_report"]
        self.last_decision = state["last_decision"]

    def _state_owner(self) -> str:
        """The env class and its presets, e.g. ``ClientSelectionEnv+tiny``."""
        return "+".join((type(self).__name__, *self.presets))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.federation is not None:
            state["_pickled_env_state"] = self.get_state()
        state["federation"] = None
        state["_fed_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        snapshot = state.pop("_pickled_env_state", None)
        self.__dict__.update(state)
        if snapshot is not None:
            self.set_state(snapshot)
