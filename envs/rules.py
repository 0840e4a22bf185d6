"""Selection rules: the one implementation of the baseline rules that pick which clients train.

The pure rules (:func:`random_k`, :func:`top_k`) work on plain arrays, so the env and the agents' heuristic
controllers (``qflgym.agents.controllers.selection``) share them.

``QFL/StepSize-v0`` and ``QFL/RoundTermination-v0`` select clients with the rule named by the config's
``selection_rule`` (``clients_per_round`` clients), looked up in :data:`SELECTION_RULES`. A registered rule is
``rule(state: ClientState, k: int, rng) -> np.ndarray[bool] [N]`` and only ever selects available clients. Add
one with ``@SELECTION_RULES.register("name")``. Names are lower case with hyphens, as the controllers' names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qflgym.registry import Registry

__all__ = ["SELECTION_RULES", "ClientState", "SelectionRule", "mask_of", "random_k", "top_k"]


@dataclass(slots=True)
class ClientState:
    """The env's per-client bookkeeping, as seen by selection rules (arrays of length N).

    Attributes:
        available: Clients that can take part in the coming round.
        last_loss: Loss of the global model on the client when it last trained, divided by ``ln K``
            (1.0 before it ever trained).
        last_selected: Round index (1-based) at which the client was last selected, 0 if never.
        times_selected: How often the client was selected in this episode.
        rounds: Rounds run so far in the episode.
    """

    available: np.ndarray
    last_loss: np.ndarray
    last_selected: np.ndarray
    times_selected: np.ndarray
    rounds: int = 0

    @classmethod
    def fresh(cls, n_clients: int) -> ClientState:
        """The state at the start of an episode."""
        return cls(
            available=np.ones(n_clients, dtype=bool),
            last_loss=np.ones(n_clients),
            last_selected=np.zeros(n_clients, dtype=np.int64),
            times_selected=np.zeros(n_clients, dtype=np.int64),
        )

    def copy(self) -> ClientState:
        """An independent copy."""
        return ClientState(
            self.available.copy(),
            self.last_loss.copy(),
            self.last_selected.copy(),
            self.times_selected.copy(),
            self.rounds,
        )


#: A selection rule: ``rule(state, k, rng) -> bool mask [N]``.
SelectionRule = Callable[[ClientState, int, np.random.Generator], np.ndarray]

#: Registry of selection rules (``selection_rule`` in the env config).
SELECTION_RULES: Registry[SelectionRule] = Registry("selection rule")


def random_k(available: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` clients drawn uniformly without replacement among the ``available`` ones (FedAvg's sampling).

    Args:
        available: ``[N]`` bool mask of the clients that can train.
        k: Clients to draw; every available client when at most ``k`` are (then nothing is drawn from ``rng``).
        rng: The generator to draw from.

    Returns:
        The ``[N]`` bool mask of the drawn clients.
    """
    idx = np.flatnonzero(available)
    if len(idx) <= k:
        return np.asarray(available, dtype=bool).copy()
    mask = np.zeros(len(available), dtype=bool)
    mask[idx[rng.permutation(len(idx))[:k]]] = True
    return mask


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` among ``candidates``, ties broken at random with ``rng``.

    Args:
        scores: ``[N]`` score of every client.
        candidates: Client indices to choose from (every candidate is returned when there are at most ``k``).
        k: How many to keep.
        rng: The generator that breaks ties (one uniform draw per candidate).
    """
    candidates = np.asarray(candidates, dtype=int)
    if k >= len(candidates):
        return candidates
    tiebreak = rng.random(len(candidates))
    order = np.lexsort((tiebreak, -np.asarray(scores)[candidates]))
    return candidates[order[:k]]


def mask_of(n: int, idx: np.ndarray) -> np.ndarray:
    """The ``[n]`` bool mask that is true at the indices ``idx``."""
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(idx, dtype=int)] = True
    return mask


@SELECTION_RULES.register("random-k")
def random_k_rule(state: ClientState, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` clients drawn uniformly without replacement among the available ones (:func:`random_k`)."""
    return random_k(state.available, k, rng)


@SELECTION_RULES.register("all-clients")
def all_clients_rule(state: ClientState, k: int, rng: np.random.Generator) -> np.ndarray:
    """Every available client (``k`` is ignored)."""
    return state.available.copy()


@SELECTION_RULES.register("loss-greedy")
def loss_greedy_rule(state: ClientState, k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` available clients with the highest last loss (unseen clients count as 1; ties at random)."""
    return mask_of(len(state.available), top_k(state.last_loss, np.flatnonzero(state.available), k, rng))


@SELECTION_RULES.register("least-recent")
def least_recent_rule(state: ClientState, k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` available clients selected longest ago (ties at random)."""
    scores = -state.last_selected.astype(np.float64)
    return mask_of(len(state.available), top_k(scores, np.flatnonzero(state.available), k, rng))
