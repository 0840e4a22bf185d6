"""Fixed selection rules: who trains when the controller does not decide selection.

``QFL/StepSize-v0`` and ``QFL/RoundTermination-v0`` select clients with the rule named by the config's
``selection_rule`` (``clients_per_round`` clients). The same rules serve as baselines in
``benchmarks/preset_spread.py``. A rule is ``rule(state: ClientState, k: int, rng) -> np.ndarray[bool] [N]``
and only ever selects available clients. Add one with ``@SELECTION_RULES.register("name")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qflgym.registry import Registry

__all__ = ["SELECTION_RULES", "ClientState", "SelectionRule"]


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


def _top_k(score: np.ndarray, available: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` available clients with the highest ``score`` (ties: lower index first)."""
    n_avail = int(np.count_nonzero(available))
    if n_avail <= k:
        return available.copy()
    masked = np.where(available, score, -np.inf)
    order = np.argsort(-masked, kind="stable")[:k]
    mask = np.zeros(len(score), dtype=bool)
    mask[order] = True
    return mask


@SELECTION_RULES.register("random_k")
def random_k(state: ClientState, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` clients drawn uniformly without replacement among the available ones."""
    idx = np.flatnonzero(state.available)
    if len(idx) <= k:
        return state.available.copy()
    mask = np.zeros(len(state.available), dtype=bool)
    mask[idx[rng.permutation(len(idx))[:k]]] = True
    return mask


@SELECTION_RULES.register("all")
def all_available(state: ClientState, k: int, rng: np.random.Generator) -> np.ndarray:
    """Every available client (``k`` is ignored)."""
    return state.available.copy()


@SELECTION_RULES.register("loss_greedy")
def loss_greedy(state: ClientState, k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` available clients with the highest last loss (unseen clients count as loss ``ln K``)."""
    return _top_k(state.last_loss, state.available, k)


@SELECTION_RULES.register("least_recent")
def least_recent(state: ClientState, k: int, rng: np.random.Generator) -> np.ndarray:
    """The ``k`` available clients selected longest ago (round robin over the available ones)."""
    return _top_k(-state.last_selected.astype(np.float64), state.available, k)
