"""What the text codec knows about an env, and its options.

The fields the env controls (:class:`ActionSpec`), the codec's options (:class:`CodecConfig`), the prompt's
columns and the number formats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qflgym.config import ConfigError

__all__ = [
    "DEFAULT_CLIENT_COLUMNS",
    "DEFAULT_GLOBAL_COLUMNS",
    "FIELDS",
    "INTEGER_FEATURES",
    "LABEL_MIX",
    "ROUND_FEATURE",
    "V1_CLIENT_COLUMNS",
    "V1_GLOBAL_COLUMNS",
    "ActionSpec",
    "CodecConfig",
    "ParseResult",
    "format_lr",
    "format_number",
]

#: Client table columns: header → observation feature name.
DEFAULT_CLIENT_COLUMNS: dict[str, str] = {
    "size": "data_size",
    "skew": "label_skew",
    "loss": "last_loss",
    "stale": "rounds_since_selected",
    "lat": "latency",
    "avail": "available",
}
#: Global line: label → observation feature name (``lr`` and ``steps`` are converted to their own units).
DEFAULT_GLOBAL_COLUMNS: dict[str, str] = {
    "acc": "val_accuracy",
    "dacc": "val_accuracy_change",
    "loss": "val_loss",
    "lr": "learning_rate",
    "steps": "local_steps",
    "bytes": "cumulative_bytes",
    "time": "cumulative_wall_time",
    "shots": "cumulative_shots",
    "gap": "target_gap",
}
#: A client column that is not one observation feature: the classes holding at least :data:`LABEL_MIX_SHARE` of
#: the client's training data, largest first, as one digit string (``"31"``), read from the ``label_frac_*``
#: features (``-`` when no class reaches the share).
LABEL_MIX = "label_mix"
LABEL_MIX_SHARE = 0.25
#: Client columns appended in v1 layouts (those with the v1 cost features; v0 prompts are unchanged): the cost of
#: one local step in time and in shots, the device noise, and the label mix that selection by label weighs.
V1_CLIENT_COLUMNS: dict[str, str] = {
    "cost": "step_time",
    "shotc": "step_shot_cost",
    "noise": "noise_level",
    "labels": LABEL_MIX,
}
#: Global items appended in v1 layouts: the share of the cost budget spent.
V1_GLOBAL_COLUMNS: dict[str, str] = {"spent": "cost_spent"}
ROUND_FEATURE = "round_fraction"
INTEGER_FEATURES = frozenset({"available"})

FIELDS = ("select", "lr", "steps", "stop")


def format_number(x: float, decimals: int = 2) -> str:
    """Format ``x`` compactly: rounded to ``decimals``, trailing zeros and the leading zero dropped.

    Examples: ``0.524 → ".52"``, ``-0.03 → "-.03"``, ``1.0 → "1"``, ``0.0 → "0"``.
    """
    if not math.isfinite(x):
        return "0"
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", "", "-"):
        return "0"
    if text.startswith("0."):
        text = text[1:]
    elif text.startswith("-0."):
        text = "-" + text[2:]
    return text


def format_lr(lr: float, digits: int | None) -> str:
    """Positional decimal text of a learning rate (``digits`` significant digits, ``None``: exact)."""
    if digits is None:
        return np.format_float_positional(float(lr), unique=True, trim="-")
    return np.format_float_positional(float(lr), precision=digits, unique=True, fractional=False, trim="-")


@dataclass(frozen=True)
class ActionSpec:
    """Which fields an env controls and their legal values (what the grammar and the parser need).

    Attributes:
        n_clients: N.
        select: The completion selects clients.
        lr: The completion sets the learning rate.
        steps: The completion sets the local steps.
        stop: The completion decides termination.
        max_selected: Selection budget ``k`` (``None``: any number).
        min_selected: Fewest ids a selection names (``0``: ``none`` is allowed); a fixed cohort size sets both
            bounds (:attr:`CodecConfig.cohort_size`).
        lr_range: Inclusive ``(low, high)`` learning rate.
        lr_grid: Learning rates the env can represent (``None``: continuous); the parser snaps to it.
        steps_range: Inclusive ``(low, high)`` local steps.
        base_lr: The env's base learning rate (converts the observation's ``log10(lr / base)``).
        max_steps: Local steps that the observation's ``local_steps`` feature divides by.
    """

    n_clients: int
    select: bool = True
    lr: bool = False
    steps: bool = False
    stop: bool = False
    max_selected: int | None = None
    min_selected: int = 0
    lr_range: tuple[float, float] = (1e-4, 10.0)
    lr_grid: tuple[float, ...] | None = None
    steps_range: tuple[int, int] = (1, 10)
    base_lr: float = 0.1
    max_steps: int = 10

    def __post_init__(self) -> None:
        if self.n_clients < 1:
            raise ConfigError(f"n_clients must be >= 1, got {self.n_clients}")
        if not (self.select or self.lr or self.steps or self.stop):
            raise ConfigError("an ActionSpec must control at least one field")
        if not 0 <= self.min_selected <= self.most_selected:
            raise ConfigError(
                f"min_selected must be in [0, {self.most_selected}] (the selection budget), got {self.min_selected}"
            )

    @property
    def most_selected(self) -> int:
        """The most ids a selection may name: the budget, or N without one."""
        return self.n_clients if self.max_selected is None else min(self.max_selected, self.n_clients)

    @property
    def fields(self) -> tuple[str, ...]:
        """The controlled fields in grammar order (a subset of ``select, lr, steps, stop``)."""
        return tuple(f for f in FIELDS if getattr(self, f))

    @classmethod
    def from_action_codec(cls, codec: Any, *, base_lr: float | None = None, max_steps: int | None = None) -> ActionSpec:
        """Build the spec from an env's ``action_codec`` (see ``qflgym.envs.actions``).

        Args:
            codec: The env's action codec (``controls``, ``n_clients`` and, where present, ``k``, ``lr_map``,
                ``lr_grid``, ``steps_range``, ``lr``, ``local_steps``).
            base_lr: Override of the base learning rate (default: the codec's).
            max_steps: Override of the local-steps scale of the observation.
        """
        controls = frozenset(getattr(codec, "controls", {"selection"}))
        lr_map = getattr(codec, "lr_map", None)
        grid = getattr(codec, "lr_grid", None)
        steps_range = tuple(int(s) for s in getattr(codec, "steps_range", (1, 10)))
        if base_lr is None:
            base_lr = lr_map.base_lr if lr_map is not None else getattr(codec, "lr", None)
        if grid is not None:
            lr_range = (float(np.min(grid)), float(np.max(grid)))
        elif lr_map is not None:
            lr_range = (lr_map.lr(-1.0), lr_map.lr(1.0))
        else:
            lr_range = (1e-4, 10.0)
        return cls(
            n_clients=int(codec.n_clients),
            select="selection" in controls,
            lr="step_size" in controls,
            steps="step_size" in controls,
            stop="termination" in controls,
            max_selected=getattr(codec, "k", None),
            lr_range=(min(lr_range), max(lr_range)),
            lr_grid=None if grid is None else tuple(float(g) for g in grid),
            steps_range=(steps_range[0], steps_range[1]),
            base_lr=float(base_lr) if base_lr is not None else 0.1,
            max_steps=int(max_steps) if max_steps is not None else max(int(steps_range[1]), 1),
        )


@dataclass(frozen=True)
class CodecConfig:
    """Options of the text codec.

    Attributes:
        decimals: Decimals of the numbers in the prompt.
        lr_digits: Significant digits of the learning rate in completions (``None``: shortest exact text).
        client_columns: Client table ``header → feature`` (``None``: :data:`DEFAULT_CLIENT_COLUMNS`, and
            :data:`V1_CLIENT_COLUMNS` after them for a v1 layout).
        global_columns: Global line ``label → feature`` (``None``: :data:`DEFAULT_GLOBAL_COLUMNS`, and
            :data:`V1_GLOBAL_COLUMNS` after them for a v1 layout).
        format_hint: End the prompt with a one-line reminder of the grammar.
        fallback_select: ``"available"`` (documented default) or ``"none"``.
        client_scale: ``"absolute"`` (the observation's values, :attr:`decimals` decimals) or ``"relative"``
            (each client column min-max scaled over this round's clients to one digit 0-9: one token per cell,
            and the ranking that selection rules use stays visible when values differ only in later decimals).
        cohort_size: Every selection names exactly this many clients (a top-k action, as FAVOR and Oort compare
            at a fixed K per round); ``None``: any number up to the env's budget. Unavailable ids among them are
            dropped as usual, so fewer may train.
    """

    decimals: int = 2
    lr_digits: int | None = 4
    client_columns: Mapping[str, str] | None = None
    global_columns: Mapping[str, str] | None = None
    format_hint: bool = True
    fallback_select: str = "available"
    client_scale: str = "absolute"
    cohort_size: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= 6:
            raise ConfigError(f"decimals must be in [0, 6], got {self.decimals}")
        if self.lr_digits is not None and not 1 <= self.lr_digits <= 17:
            raise ConfigError(f"lr_digits must be None or in [1, 17], got {self.lr_digits}")
        if self.client_scale not in ("absolute", "relative"):
            raise ConfigError(f"client_scale must be 'absolute' or 'relative', got {self.client_scale!r}")
        if self.fallback_select not in ("available", "none"):
            raise ConfigError(f"fallback_select must be 'available' or 'none', got {self.fallback_select!r}")
        size = self.cohort_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ConfigError(f"cohort_size must be None or an integer >= 1, got {size!r}")


@dataclass
class ParseResult:
    """What :meth:`TextCodec.parse` made of one completion.

    Attributes:
        decision: The decision to act on (fallbacks filled in).
        valid: Every controlled field parsed and was in range.
        errors: One short reason per invalid field (e.g. ``"lr: out of range"``).
        masked: Unavailable client ids the completion selected (dropped).
        strict: The completion is exactly the canonical rendering of ``decision``.
    """

    decision: Any
    valid: bool
    errors: list[str] = field(default_factory=list)
    masked: list[int] = field(default_factory=list)
    strict: bool = False
