"""What a heuristic controller sees.

The env's facts (:class:`EnvFacts`) and named access to its observation (:class:`ObsView`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qflgym.agents.controllers.base import env_attr

__all__ = ["EnvFacts", "ObsView"]


# ------------------------------------------------------------------------------------------------ env facts
@dataclass(frozen=True)
class EnvFacts:
    """What a heuristic needs to know about an env besides its observation.

    Attributes:
        n_clients: Number of clients N.
        clients_per_round: The default k of selection rules: the env's selection budget when its actions have
            one (``selection_budget``), else its ``clients_per_round`` (see the env's config).
        max_clients: Most clients an action may select (the selection budget, else N).
        default_lr: The learning rate the env uses when the controller does not set one.
        default_local_steps: The local steps the env uses when the controller does not set them.
        max_rounds: Round budget of an episode.
        target: Target validation accuracy of the env, or None.
    """

    n_clients: int
    clients_per_round: int
    max_clients: int
    default_lr: float
    default_local_steps: int
    max_rounds: int | None
    target: float | None

    @classmethod
    def from_env(cls, env: Any) -> EnvFacts:
        """Read the facts from a qflgym env (possibly wrapped or vectorized)."""
        config = env_attr(env, "config")
        codec = env_attr(env, "action_codec")
        n = int(config.n_clients)
        budget = getattr(codec, "k", None)
        return cls(
            n_clients=n,
            clients_per_round=int(budget) if budget is not None else int(config.k),
            max_clients=int(budget) if budget is not None else n,
            default_lr=float(config.fixed_lr),
            default_local_steps=int(config.fixed_local_steps),
            max_rounds=int(config.round_budget),
            target=None if config.target_accuracy is None else float(config.target_accuracy),
        )


# --------------------------------------------------------------------------------------------- observations
class ObsView:
    """Named access to one flat observation through the env's :class:`ObservationLayout`.

    Feature names are those of ``qflgym.envs.observation`` (``CLIENT_FEATURES``, ``GLOBAL_FEATURES``); their
    scaling is documented there (e.g. ``last_loss`` is divided by ``ln K`` and is 1 for clients that never
    trained, ``latency`` is relative to the slowest client, ``rounds_since_selected`` is a fraction of the
    round budget).

    Args:
        layout: The env's ``ObservationLayout``.
    """

    def __init__(self, layout: Any) -> None:
        self.layout = layout
        self.n_clients = int(layout.n_clients)
        self.client_features = frozenset(layout.client_features)
        self.global_features = frozenset(layout.global_features)
        self.obs: np.ndarray = np.zeros(0)

    def bind(self, obs: np.ndarray) -> ObsView:
        """Point the view at ``obs`` and return it."""
        self.obs = obs
        return self

    def has(self, name: str) -> bool:
        """Whether the observation carries the (client or global) feature ``name``."""
        return name in self.client_features or name in self.global_features

    def client(self, name: str) -> np.ndarray:
        """Per-client feature ``name`` as a ``[N]`` float array."""
        return np.asarray(self.layout.client(self.obs, name), dtype=np.float64)

    def global_(self, name: str) -> float:
        """Global feature ``name`` as a float."""
        return float(self.layout.global_(self.obs, name))

    def available(self) -> np.ndarray:
        """``[N]`` bool: clients available this round."""
        return self.client("available") > 0.5
