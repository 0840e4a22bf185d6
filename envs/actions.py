"""Action spaces of the QFL suite and the codecs between actions and :class:`ControlDecision`.

Every env exposes ``env.unwrapped.action_codec``: ``decode(action) -> ControlDecision`` and
``encode(decision) -> action``. SB3-style controllers work with the flat action; heuristics and LLM policies
build a :class:`ControlDecision` and encode it, so one ``predict`` protocol serves them all.

Round-trip guarantees:

* ``codec.encode(codec.decode(a))`` equals ``a`` for every valid action of a discrete space (``MultiBinary``,
  ``Discrete``, ``MultiDiscrete``); for ``Box`` spaces it gives the canonical action of the same decision.
* ``codec.decode(codec.encode(d))`` equals ``d`` on the fields the env controls for every representable
  decision (``lr`` up to float rounding); unrepresentable values are clipped to the range (``lr``,
  ``local_steps``) or snapped to the nearest grid point (``lr`` in ``FullControl``). Fields the env does not
  control are ignored by ``encode`` and come back from ``decode`` as ``None``, or as the env's fixed value.

Actions outside the space raise a :class:`ValueError` that names the space.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from typing_extensions import override

__all__ = [
    "ActionCodec",
    "ControlDecision",
    "FullControlCodec",
    "LearningRateMap",
    "SelectionCodec",
    "StepSizeCodec",
    "TerminationCodec",
    "TopKSelectionCodec",
]


@dataclass(frozen=True, eq=False)
class ControlDecision:
    """What a controller decides for one round.

    Attributes:
        selected: Boolean mask ``[N]`` of the clients asked to train, or ``None`` to let the env's configured
            selection rule decide (envs that do not control selection).
        lr: Local learning rate of the round, or ``None`` for the env's fixed learning rate.
        local_steps: Local minibatch steps of the round, or ``None`` for the env's fixed value.
        stop: End the episode now instead of running a round.
    """

    selected: np.ndarray | None = None
    lr: float | None = None
    local_steps: int | None = None
    stop: bool = False

    @classmethod
    def select(cls, client_ids: Any, n_clients: int, **kwargs: Any) -> ControlDecision:
        """Build a decision selecting ``client_ids`` (any iterable of ints) out of ``n_clients``."""
        mask = np.zeros(n_clients, dtype=bool)
        mask[np.asarray(list(client_ids), dtype=np.int64)] = True
        return cls(selected=mask, **kwargs)

    @property
    def selected_ids(self) -> tuple[int, ...] | None:
        """The selected client ids (``None`` when the env's rule decides)."""
        return None if self.selected is None else tuple(int(i) for i in np.flatnonzero(self.selected))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlDecision):
            return NotImplemented
        if (self.selected is None) != (other.selected is None):
            return False
        same_sel = self.selected is None or np.array_equal(self.selected, other.selected)
        return same_sel and (self.lr, self.local_steps, self.stop) == (
            other.lr,
            other.local_steps,
            other.stop,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"ControlDecision(selected={self.selected_ids}, lr={self.lr}, "
            f"local_steps={self.local_steps}, stop={self.stop})"
        )


def _invalid(action: Any, space: spaces.Space, why: str) -> ValueError:
    return ValueError(f"action {action!r} is not in the action space {space}: {why}")


def _as_array(action: Any, space: spaces.Space) -> np.ndarray:
    try:
        return np.asarray(action)
    except Exception as err:  # ragged sequences and the like
        raise _invalid(action, space, f"cannot be read as an array ({err})") from None


def _integral(a: np.ndarray, action: Any, space: spaces.Space) -> np.ndarray:
    """Return ``a`` as int64 if it holds only integer values (bool, int, or integral floats)."""
    if a.dtype.kind in "biu":
        return a.astype(np.int64, copy=False)
    if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise _invalid(action, space, f"expected integer values, got dtype {a.dtype}")


class ActionCodec(ABC):
    """Maps between one env's action space and :class:`ControlDecision`.

    Attributes:
        space: The Gymnasium action space.
        n_clients: Number of clients N.
        controls: Which knobs the action sets: a subset of ``{"selection", "step_size", "termination"}``.
    """

    space: spaces.Space
    n_clients: int
    controls: frozenset[str]

    @abstractmethod
    def decode(self, action: Any) -> ControlDecision:
        """Validate ``action`` and return the decision it encodes.

        Raises:
            ValueError: If ``action`` is not in :attr:`space` (the message names the space).
        """

    @abstractmethod
    def encode(self, decision: ControlDecision) -> Any:
        """Return the action that encodes ``decision`` (fields the env does not control are ignored)."""

    @abstractmethod
    def mask(self, available: np.ndarray) -> np.ndarray:
        """Action mask in sb3-contrib's format, given the clients available this round.

        Discrete components give one entry per choice (``MultiBinary``: ``[can be 0, can be 1]`` per client,
        flattened); ``Box`` components give one entry per dimension.
        """


class SelectionCodec(ActionCodec):
    """``MultiBinary(N)``: client ``i`` trains iff ``action[i] == 1``. All zeros is a valid (empty) round.

    Args:
        n_clients: N.
        lr: The env's fixed learning rate (reported by :meth:`decode`).
        local_steps: The env's fixed local steps (reported by :meth:`decode`).
    """

    controls = frozenset({"selection"})

    def __init__(self, n_clients: int, lr: float | None = None, local_steps: int | None = None) -> None:
        self.n_clients = n_clients
        self.space = spaces.MultiBinary(n_clients)
        self.lr = lr
        self.local_steps = local_steps

    def selection(self, action: Any) -> np.ndarray:
        """Validate and return the boolean selection mask ``[N]``."""
        a = _as_array(action, self.space)
        if a.shape != (self.n_clients,):
            raise _invalid(action, self.space, f"expected shape ({self.n_clients},), got {a.shape}")
        if a.dtype.kind == "b":
            return a.copy()
        if a.dtype.kind not in "iu":  # the hot path (SB3 / sampled actions) is integer
            a = _integral(a, action, self.space)
        if (a >> 1).any():  # anything but 0 and 1 (negatives included) has bits above the lowest
            raise _invalid(action, self.space, "entries must be 0 or 1")
        return a.astype(bool)

    @override
    def decode(self, action: Any) -> ControlDecision:
        return ControlDecision(self.selection(action), self.lr, self.local_steps, False)

    @override
    def encode(self, decision: ControlDecision) -> np.ndarray:
        return _selection_mask(decision, self.n_clients).astype(np.int8)

    @override
    def mask(self, available: np.ndarray) -> np.ndarray:
        m = np.ones((self.n_clients, 2), dtype=bool)
        m[:, 1] = available
        return m.reshape(-1)


class TopKSelectionCodec(ActionCodec):
    """``Box(-1, 1, (N,))`` of client scores: the (at most) ``k`` highest positive scores train.

    Clients with a score ``<= 0`` are never selected, so fewer than ``k`` (or none) may train; ties are broken
    by the lower client index.

    Args:
        n_clients: N.
        k: The selection budget.
        lr: The env's fixed learning rate.
        local_steps: The env's fixed local steps.
    """

    controls = frozenset({"selection"})

    def __init__(self, n_clients: int, k: int, lr: float | None = None, local_steps: int | None = None) -> None:
        self.n_clients = n_clients
        self.k = k
        self.space = spaces.Box(-1.0, 1.0, (n_clients,), dtype=np.float32)
        self.lr = lr
        self.local_steps = local_steps

    def selection(self, action: Any) -> np.ndarray:
        """Validate the scores and return the boolean selection mask ``[N]``."""
        a = _box_values(action, self.space)
        positive = a > 0
        if np.count_nonzero(positive) <= self.k:
            return positive
        order = np.argsort(-a, kind="stable")[: self.k]
        mask = np.zeros(self.n_clients, dtype=bool)
        mask[order] = True
        return mask

    @override
    def decode(self, action: Any) -> ControlDecision:
        return ControlDecision(self.selection(action), self.lr, self.local_steps, False)

    @override
    def encode(self, decision: ControlDecision) -> np.ndarray:
        mask = _selection_mask(decision, self.n_clients)
        if np.count_nonzero(mask) > self.k:
            raise ValueError(
                f"decision selects {np.count_nonzero(mask)} clients but the selection budget is k={self.k}"
            )
        return np.where(mask, 1.0, -1.0).astype(np.float32)

    @override
    def mask(self, available: np.ndarray) -> np.ndarray:
        return np.asarray(available, dtype=bool).copy()


class LearningRateMap:
    """Log-scale map between ``[-1, 1]`` and a learning-rate multiplier in ``[low, high]``.

    ``multiplier(a) = low * (high / low) ** ((a + 1) / 2)``; with a range symmetric in log scale
    (e.g. ``[0.1, 10]``) ``a = 0`` is the base learning rate.

    Args:
        base_lr: The federation's learning rate (``training.lr``).
        low: Smallest multiplier.
        high: Largest multiplier.
    """

    def __init__(self, base_lr: float, low: float, high: float) -> None:
        self.base_lr = float(base_lr)
        self.low = float(low)
        self.high = float(high)
        self._log_low = math.log(self.low)
        self._log_span = math.log(self.high) - self._log_low

    def lr(self, a: float) -> float:
        """The learning rate for the coordinate ``a`` in ``[-1, 1]``."""
        return self.base_lr * math.exp(self._log_low + (a + 1.0) * 0.5 * self._log_span)

    def coordinate(self, lr: float) -> float:
        """The coordinate in ``[-1, 1]`` of ``lr`` (clipped to the range)."""
        if self._log_span == 0.0:
            return 0.0
        a = 2.0 * (math.log(lr / self.base_lr) - self._log_low) / self._log_span - 1.0
        return min(1.0, max(-1.0, a))


class StepSizeCodec(ActionCodec):
    """``Box(-1, 1, (2,))``: ``[lr coordinate, local-steps coordinate]``.

    ``lr = base_lr * low * (high / low) ** ((a[0] + 1) / 2)`` (log scale) and
    ``local_steps = round(s_min + (a[1] + 1) / 2 * (s_max - s_min))``.

    Args:
        n_clients: N.
        lr_map: The learning-rate map.
        steps_range: ``(s_min, s_max)`` local steps.
    """

    controls = frozenset({"step_size"})

    def __init__(self, n_clients: int, lr_map: LearningRateMap, steps_range: tuple[int, int]) -> None:
        self.n_clients = n_clients
        self.lr_map = lr_map
        self.steps_range = (int(steps_range[0]), int(steps_range[1]))
        self.space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)

    def step_size(self, action: Any) -> tuple[float, int]:
        """Validate and return ``(lr, local_steps)``."""
        a = _box_values(action, self.space)
        return self.lr_map.lr(float(a[0])), self._steps(float(a[1]))

    def _steps(self, a: float) -> int:
        lo, hi = self.steps_range
        return math.floor(lo + (a + 1.0) * 0.5 * (hi - lo) + 0.5)

    def _steps_coordinate(self, steps: int) -> float:
        lo, hi = self.steps_range
        if hi == lo:
            return 0.0
        return 2.0 * (min(hi, max(lo, int(steps))) - lo) / (hi - lo) - 1.0

    @override
    def decode(self, action: Any) -> ControlDecision:
        lr, steps = self.step_size(action)
        return ControlDecision(None, lr, steps, False)

    @override
    def encode(self, decision: ControlDecision) -> np.ndarray:
        lr = self.lr_map.base_lr if decision.lr is None else decision.lr
        steps = self.steps_range[0] if decision.local_steps is None else decision.local_steps
        return np.array([self.lr_map.coordinate(lr), self._steps_coordinate(steps)], dtype=np.float32)

    @override
    def mask(self, available: np.ndarray) -> np.ndarray:
        return np.ones(2, dtype=bool)


class TerminationCodec(ActionCodec):
    """``Discrete(2)``: ``0`` = run the round, ``1`` = stop now.

    Args:
        n_clients: N.
        lr: The env's fixed learning rate.
        local_steps: The env's fixed local steps.
    """

    controls = frozenset({"termination"})

    def __init__(self, n_clients: int, lr: float | None = None, local_steps: int | None = None) -> None:
        self.n_clients = n_clients
        self.space = spaces.Discrete(2)
        self.lr = lr
        self.local_steps = local_steps

    def stop(self, action: Any) -> bool:
        """Validate and return whether the action stops."""
        a = _as_array(action, self.space)
        if a.size != 1 or a.ndim > 1:
            raise _invalid(action, self.space, f"expected a single integer, got shape {a.shape}")
        value = int(_integral(a.reshape(()), action, self.space))
        if value not in (0, 1):
            raise _invalid(action, self.space, "expected 0 (continue) or 1 (stop)")
        return value == 1

    @override
    def decode(self, action: Any) -> ControlDecision:
        return ControlDecision(None, self.lr, self.local_steps, self.stop(action))

    @override
    def encode(self, decision: ControlDecision) -> int:
        return int(bool(decision.stop))

    @override
    def mask(self, available: np.ndarray) -> np.ndarray:
        return np.ones(2, dtype=bool)


class FullControlCodec(ActionCodec):
    """One 1-D ``MultiDiscrete``: ``[sel_0, ..., sel_{N-1}, lr_bin, steps_index, stop]``.

    * ``sel_i`` in ``{0, 1}``: client ``i`` trains;
    * ``lr_bin`` in ``{0, ..., B-1}``: multiplier ``low * (high / low) ** (lr_bin / (B - 1))`` of the base lr
      (log-spaced; the middle bin of an odd ``B`` over a log-symmetric range is the base lr);
    * ``steps_index`` in ``{0, ..., s_max - s_min}``: ``local_steps = s_min + steps_index``;
    * ``stop`` in ``{0, 1}``: end the episode now (the other entries are then ignored).

    Args:
        n_clients: N.
        lr_map: The learning-rate map (its range).
        lr_bins: B, the number of learning-rate choices.
        steps_range: ``(s_min, s_max)``.
    """

    controls = frozenset({"selection", "step_size", "termination"})

    def __init__(self, n_clients: int, lr_map: LearningRateMap, lr_bins: int, steps_range: tuple[int, int]) -> None:
        self.n_clients = n_clients
        self.lr_map = lr_map
        self.lr_bins = int(lr_bins)
        self.steps_range = (int(steps_range[0]), int(steps_range[1]))
        n_steps = self.steps_range[1] - self.steps_range[0] + 1
        self.nvec = np.array([2] * n_clients + [self.lr_bins, n_steps, 2], dtype=np.int64)
        self.space = spaces.MultiDiscrete(self.nvec)
        coords = np.zeros(1) if self.lr_bins == 1 else np.linspace(-1.0, 1.0, self.lr_bins)
        #: The learning rate of each bin.
        self.lr_grid = np.array([lr_map.lr(float(c)) for c in coords])
        self._log_grid = np.log(self.lr_grid)

    def _validate(self, action: Any) -> np.ndarray:
        a = _as_array(action, self.space)
        if a.shape != self.nvec.shape:
            raise _invalid(action, self.space, f"expected shape {self.nvec.shape}, got {a.shape}")
        a = _integral(a, action, self.space)
        if np.any(a < 0) or np.any(a >= self.nvec):
            raise _invalid(action, self.space, "an entry is outside [0, nvec)")
        return a

    @override
    def decode(self, action: Any) -> ControlDecision:
        a = self._validate(action)
        n = self.n_clients
        return ControlDecision(
            a[:n] == 1, float(self.lr_grid[a[n]]), self.steps_range[0] + int(a[n + 1]), bool(a[n + 2] == 1)
        )

    @override
    def encode(self, decision: ControlDecision) -> np.ndarray:
        n = self.n_clients
        out = np.zeros(n + 3, dtype=np.int64)
        out[:n] = _selection_mask(decision, n)
        lr = self.lr_map.base_lr if decision.lr is None else decision.lr
        out[n] = int(np.argmin(np.abs(self._log_grid - math.log(lr))))
        steps = self.steps_range[0] if decision.local_steps is None else int(decision.local_steps)
        out[n + 1] = min(self.steps_range[1], max(self.steps_range[0], steps)) - self.steps_range[0]
        out[n + 2] = int(bool(decision.stop))
        return out

    @override
    def mask(self, available: np.ndarray) -> np.ndarray:
        sel = np.ones((self.n_clients, 2), dtype=bool)
        sel[:, 1] = available
        rest = np.ones(int(self.nvec[self.n_clients :].sum()), dtype=bool)
        return np.concatenate([sel.reshape(-1), rest])


def _box_values(action: Any, space: spaces.Box) -> np.ndarray:
    a = _as_array(action, space)
    if a.shape != space.shape:
        raise _invalid(action, space, f"expected shape {space.shape}, got {a.shape}")
    if a.dtype.kind not in "biuf":
        raise _invalid(action, space, f"expected numbers, got dtype {a.dtype}")
    inside = (a >= space.low) & (a <= space.high)  # NaN fails both comparisons
    if not inside.all():
        outside = np.argwhere(~inside)
        shown = ", ".join(f"[{', '.join(map(str, index))}] = {float(a[tuple(index)])!r}" for index in outside[:4])
        raise _invalid(action, space, f"values must be finite and within [-1, 1]; outside: {shown}")
    return a.astype(np.float64, copy=False)


def _selection_mask(decision: ControlDecision, n_clients: int) -> np.ndarray:
    if decision.selected is None:
        return np.zeros(n_clients, dtype=bool)
    mask = np.asarray(decision.selected)
    if mask.shape != (n_clients,):
        raise ValueError(f"decision.selected must be a boolean mask of shape ({n_clients},), got {mask.shape}")
    return mask.astype(bool, copy=False)
