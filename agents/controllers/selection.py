"""Client-selection rules of the heuristic controllers, by name in :data:`SELECTORS`.

``all-clients``, ``random-k``, ``round-robin``, ``power-of-choice``, ``oort``, ``loss-greedy``. The rules that the
envs also use (``random-k``, ``loss-greedy``) call the one implementation in :mod:`qflgym.envs.rules`; ties between
equal scores are broken at random with the controller's generator (:func:`~qflgym.envs.rules.top_k`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from qflgym.agents.controllers.observations import EnvFacts, ObsView
from qflgym.config import ConfigError
from qflgym.envs.rules import mask_of, random_k, top_k
from qflgym.registry import Registry

__all__ = ["SELECTORS", "AllClients", "LossGreedy", "OortLike", "PowerOfChoice", "RandomK", "RoundRobin", "Selector"]

#: Client selectors by name: ``cls(facts, **kwargs)`` with ``select(view, memory, rng) -> bool [N]``.
SELECTORS: Registry[type[Selector]] = Registry("selector")


class Selector(ABC):
    """Chooses which clients train this round.

    Args:
        facts: The env's :class:`EnvFacts`.
        k: Clients per round; default :attr:`EnvFacts.clients_per_round` (the env's selection budget, else its
            ``clients_per_round``).

    Raises:
        ConfigError: ``k`` is outside ``[1, N]`` or above the env's selection budget.
    """

    def __init__(self, facts: EnvFacts, k: int | None = None) -> None:
        self.n = facts.n_clients
        k = facts.clients_per_round if k is None else k
        if not 1 <= int(k) <= facts.max_clients:
            limit = "N" if facts.max_clients == self.n else "the env's selection budget"
            raise ConfigError(f"{type(self).__name__}: k must be in [1, {facts.max_clients}] ({limit}), got {k}")
        self.k = int(k)

    @abstractmethod
    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Return a ``[N]`` bool mask of the selected clients."""


@SELECTORS.register("all-clients")
class AllClients(Selector):
    """Full participation: every available client trains every round.

    Raises:
        ConfigError: On envs whose actions have a selection budget below N (use a k-client rule there).
    """

    def __init__(self, facts: EnvFacts) -> None:
        super().__init__(facts, k=facts.n_clients)

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Select every available client."""
        return view.available().copy()


@SELECTORS.register("random-k")
class RandomK(Selector):
    """k clients drawn uniformly without replacement among the available ones (FedAvg's sampling)."""

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Draw k available clients uniformly."""
        return random_k(view.available(), self.k, rng)


@SELECTORS.register("round-robin")
class RoundRobin(Selector):
    """Clients in a fixed cyclic order, k per round, skipping unavailable ones (the cursor persists)."""

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Take the next k available clients after the cursor."""
        cursor = memory.get("cursor", 0)
        avail = view.available()
        chosen: list[int] = []
        for step in range(self.n):
            i = (cursor + step) % self.n
            if avail[i]:
                chosen.append(i)
                if len(chosen) == self.k:
                    break
        if chosen:
            memory["cursor"] = (chosen[-1] + 1) % self.n
        return mask_of(self.n, np.array(chosen, dtype=int))


@SELECTORS.register("power-of-choice")
class PowerOfChoice(Selector):
    """Power-of-Choice (Cho, Wang & Joshi, 2020): sample d candidates, keep the k with the highest local loss.

    Candidates are drawn without replacement with probability proportional to the clients' data size (the
    paper's ``p_k``); the loss is each client's last reported training loss (the communication-free
    ``rpow-d`` variant), so never-selected clients keep the env's initial loss value.

    Args:
        facts: The env's :class:`EnvFacts`.
        k: Clients per round.
        d: Candidate-set size, ``k <= d <= N``; default ``min(N, 2k)``.
    """

    def __init__(self, facts: EnvFacts, k: int | None = None, d: int | None = None) -> None:
        super().__init__(facts, k)
        d = min(self.n, 2 * self.k) if d is None else int(d)
        if not self.k <= d <= self.n:
            raise ConfigError(f"d must be in [k={self.k}, N={self.n}], got {d}")
        self.d = d

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Sample d candidates by data size, keep the k with the highest last loss."""
        avail = np.flatnonzero(view.available())
        if len(avail) == 0:
            return np.zeros(self.n, dtype=bool)
        weights = view.client("data_size")[avail] if view.has("data_size") else np.ones(len(avail))
        weights = np.clip(weights, 1e-12, None)
        candidates = rng.choice(avail, size=min(self.d, len(avail)), replace=False, p=weights / weights.sum())
        memory["candidates"] = np.sort(candidates)
        return mask_of(self.n, top_k(view.client("last_loss"), candidates, self.k, rng))


@SELECTORS.register("loss-greedy")
class LossGreedy(Selector):
    """The k available clients with the highest last training loss (ties at random)."""

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Keep the k highest-loss available clients."""
        avail = np.flatnonzero(view.available())
        return mask_of(self.n, top_k(view.client("last_loss"), avail, self.k, rng))


@SELECTORS.register("oort")
class OortLike(Selector):
    """An Oort-like guided selection (Lai et al., OSDI 2021): statistical utility times a speed penalty.

    Utility of client i: ``size_i * loss_i`` (Oort's ``|B_i| sqrt(mean loss^2)`` with the last reported loss),
    plus Oort's staleness bonus ``sqrt(staleness_weight * log(R) / L_i)`` (``R`` the current round, ``L_i``
    the round the client was last selected, counted from 1), times the
    speed penalty ``(T / latency_i) ** alpha`` for clients slower than the preferred duration ``T`` (the
    ``pacer_quantile`` quantile of the available clients' latencies). A fraction ``epsilon`` of the k slots
    explores never-selected clients, fastest first; the rest exploit the highest utilities.

    Args:
        facts: The env's :class:`EnvFacts`.
        k: Clients per round.
        alpha: Exponent of the speed penalty (Oort's default is 2).
        epsilon: Fraction of the slots that explore never-selected clients.
        pacer_quantile: Quantile of latencies that sets the preferred round duration ``T``.
        staleness_weight: Weight of the staleness bonus (Oort uses 0.1).
    """

    def __init__(
        self,
        facts: EnvFacts,
        k: int | None = None,
        alpha: float = 2.0,
        epsilon: float = 0.2,
        pacer_quantile: float = 0.5,
        staleness_weight: float = 0.1,
    ) -> None:
        super().__init__(facts, k)
        if alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {alpha}")
        if not 0.0 <= epsilon <= 1.0:
            raise ConfigError(f"epsilon must be in [0, 1], got {epsilon}")
        if not 0.0 < pacer_quantile <= 1.0:
            raise ConfigError(f"pacer_quantile must be in (0, 1], got {pacer_quantile}")
        self.alpha, self.epsilon = float(alpha), float(epsilon)
        self.pacer_quantile, self.staleness_weight = float(pacer_quantile), float(staleness_weight)
        self.max_rounds = facts.max_rounds or 1

    def utility(self, view: ObsView, memory: dict[str, Any]) -> np.ndarray:
        """Oort-like utility ``[N]`` of every client (before exploration)."""
        size = view.client("data_size") if view.has("data_size") else np.ones(self.n)
        util = size * np.clip(view.client("last_loss"), 0.0, None)
        rnd = round(view.global_("round_fraction") * self.max_rounds) + 1  # R, 1-based
        if view.has("rounds_since_selected") and self.staleness_weight > 0 and rnd > 1:
            since = np.round(view.client("rounds_since_selected") * self.max_rounds)
            last = np.clip(rnd - since, 1.0, None)
            util = util + np.sqrt(self.staleness_weight * math.log(rnd) / last)
        if view.has("latency") and self.alpha > 0:
            latency = np.clip(view.client("latency"), 1e-12, None)
            avail = view.available()
            pref = np.quantile(latency[avail] if avail.any() else latency, self.pacer_quantile)
            util = util * np.where(latency > pref, (pref / latency) ** self.alpha, 1.0)
        return util

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Explore ``epsilon * k`` never-selected clients (fastest first), exploit the rest by utility."""
        avail = view.available()
        util = self.utility(view, memory)
        unexplored = (
            np.flatnonzero(avail & (view.client("times_selected") <= 0))
            if view.has("times_selected")
            else np.zeros(0, dtype=int)
        )
        n_explore = min(len(unexplored), round(self.epsilon * self.k))
        chosen: list[int] = []
        if n_explore:
            speed = -view.client("latency") if view.has("latency") else np.zeros(self.n)
            chosen.extend(top_k(speed, unexplored, n_explore, rng).tolist())
        rest = np.array([i for i in np.flatnonzero(avail) if i not in set(chosen)], dtype=int)
        chosen.extend(top_k(util, rest, self.k - len(chosen), rng).tolist())
        return mask_of(self.n, np.array(chosen, dtype=int))
