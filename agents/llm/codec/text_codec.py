"""Text codec of the LLM policy: observation → compact prompt, completion → action.

**Prompt.** One task line, the global state on one line, then a per-client table, then ``action:``::

    QFL control, round .06 of the budget. Choose the clients that train this round.
    acc .62 dacc .03 loss .45 lr .2 steps 1 bytes .12 time .3 shots 0 gap .18
    id size skew loss stale lat avail
    0 .52 .1 .81 .04 .3 1
    1 ...
    reply: select <ids>|none
    action:

Numbers are rounded to :attr:`CodecConfig.decimals` decimals with the leading zero dropped (``.52``). The learning
rate is shown in its own units (the observation holds ``log10(lr / base lr)``), the local steps as an integer.

**Completion grammar** (only the fields the env controls, in this order, separated by ``" | "``)::

    action  := " " field (" | " field)*
    select  := "select " ( "none" | id (" " id)* )     ids ascending, each in [0, N)
    lr      := "lr " decimal                            within the env's learning-rate range
    steps   := "steps " integer                         within the env's local-steps range
    stop    := "stop " ("yes" | "no")

e.g. ``" select 1 4 7 | lr 0.05 | steps 2 | stop no"`` on ``QFL/FullControl-v0``, ``" select 1 4 7"`` on
``QFL/ClientSelection-v0``. The canonical rendering (:meth:`TextCodec.render`) is what the policy is trained to
emit and what constrained decoding (:mod:`qflgym.agents.llm.grammar`) enforces.

**Parsing** (:meth:`TextCodec.parse`) is lenient: case, extra spaces, ``:``/``=`` after keywords, commas between
ids, fields in any order, ``true/false/1/0`` for stop and text after the action are accepted. Each field the env
controls is checked on its own; when it is missing, malformed or out of range the **fallback** for that field is
used and the completion counts as invalid (:attr:`TextCodec.invalid_rate`):

* selection → every available client (when the env has a budget ``k``: the ``k`` available clients that waited
  longest, ties to the lower id); ids of unavailable clients are dropped (counted in ``masked``, not invalid);
  duplicates are merged; more than ``k`` ids → the first ``k`` listed, invalid;
* lr → the learning rate of the last round (read from the observation, clipped into the range);
* steps → the local steps of the last round (from the observation, clipped into the range);
* stop → ``no`` (garbage never ends an episode).

**Round trip.** ``parse(render(d)) == d`` on the controlled fields for every decision the env can represent, so
``action → decision → text → decision → action`` is exact for every env: discrete spaces exactly; the
learning rate is printed with :attr:`CodecConfig.lr_digits` significant digits (``None``: the shortest text that
reads back to the same float). ``FullControl`` snaps the lr to its grid, so 3 digits are exact there; on the
continuous ``StepSize`` box the default 4 digits round-trip within 0.05 % of the lr (exact with ``None``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_CLIENT_COLUMNS",
    "DEFAULT_GLOBAL_COLUMNS",
    "ActionSpec",
    "CodecConfig",
    "ParseResult",
    "TextCodec",
    "format_number",
    "synthetic_corpus",
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
_ROUND_FEATURE = "round_fraction"
_INTEGER_FEATURES = frozenset({"available"})

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
    lr_range: tuple[float, float] = (1e-4, 10.0)
    lr_grid: tuple[float, ...] | None = None
    steps_range: tuple[int, int] = (1, 10)
    base_lr: float = 0.1
    max_steps: int = 10

    def __post_init__(self) -> None:
        if self.n_clients < 1:
            raise ValueError(f"n_clients must be >= 1, got {self.n_clients}")
        if not (self.select or self.lr or self.steps or self.stop):
            raise ValueError("an ActionSpec must control at least one field")

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
        client_columns: Client table ``header → feature`` (``None``: :data:`DEFAULT_CLIENT_COLUMNS`).
        global_columns: Global line ``label → feature`` (``None``: :data:`DEFAULT_GLOBAL_COLUMNS`).
        format_hint: End the prompt with a one-line reminder of the grammar.
        fallback_select: ``"available"`` (documented default) or ``"none"``.
        client_scale: ``"absolute"`` (the observation's values, :attr:`decimals` decimals) or ``"relative"``
            (each client column min-max scaled over this round's clients to one digit 0-9: one token per cell,
            and the ranking that selection rules use stays visible when values differ only in later decimals).
    """

    decimals: int = 2
    lr_digits: int | None = 4
    client_columns: Mapping[str, str] | None = None
    global_columns: Mapping[str, str] | None = None
    format_hint: bool = True
    fallback_select: str = "available"
    client_scale: str = "absolute"

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= 6:
            raise ValueError(f"decimals must be in [0, 6], got {self.decimals}")
        if self.lr_digits is not None and not 1 <= self.lr_digits <= 17:
            raise ValueError(f"lr_digits must be None or in [1, 17], got {self.lr_digits}")
        if self.client_scale not in ("absolute", "relative"):
            raise ValueError(f"client_scale must be 'absolute' or 'relative', got {self.client_scale!r}")
        if self.fallback_select not in ("available", "none"):
            raise ValueError(f"fallback_select must be 'available' or 'none', got {self.fallback_select!r}")


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


def _decision_class() -> Any:
    from qflgym.envs.actions import ControlDecision

    return ControlDecision


class _PlainLayout:
    """A stand-in for ``ObservationLayout`` over explicit feature names (used by :func:`synthetic_corpus`)."""

    def __init__(self, n_clients: int, client_features: Sequence[str], global_features: Sequence[str]) -> None:
        self.n_clients = n_clients
        self.client_features = tuple(client_features)
        self.global_features = tuple(global_features)
        self._ci = {n: i for i, n in enumerate(self.client_features)}
        self._gi = {n: i for i, n in enumerate(self.global_features)}
        self.client_size = n_clients * len(self.client_features)

    def client(self, obs: np.ndarray, name: str) -> np.ndarray:
        block = np.asarray(obs)[..., : self.client_size].reshape(*np.shape(obs)[:-1], self.n_clients, -1)
        return block[..., self._ci[name]]

    def global_(self, obs: np.ndarray, name: str) -> Any:
        value = np.asarray(obs)[..., self.client_size + self._gi[name]]
        return float(value) if np.ndim(value) == 0 else value


class TextCodec:
    """Observation ↔ prompt and completion ↔ decision/action for one env.

    Args:
        spec: What the env controls (:meth:`ActionSpec.from_action_codec`).
        layout: The env's ``ObservationLayout`` (reads features by name).
        action_codec: The env's ``action_codec`` (``encode``); optional for text-only use.
        config: Formatting and fallback options.

    Attributes:
        stats: Counters ``completions``, ``invalid``, ``masked`` and one per error kind.
    """

    def __init__(
        self,
        spec: ActionSpec,
        layout: Any,
        action_codec: Any = None,
        config: CodecConfig | None = None,
    ) -> None:
        self.spec = spec
        self.layout = layout
        self.action_codec = action_codec
        self.config = config or CodecConfig()
        client_features = set(getattr(layout, "client_features", ()))
        global_features = set(getattr(layout, "global_features", ()))
        columns = self.config.client_columns or DEFAULT_CLIENT_COLUMNS
        self.client_columns = {h: f for h, f in columns.items() if not client_features or f in client_features}
        columns = self.config.global_columns or DEFAULT_GLOBAL_COLUMNS
        self.global_columns = {h: f for h, f in columns.items() if not global_features or f in global_features}
        self._has_round = not global_features or _ROUND_FEATURE in global_features
        self._has_avail = not client_features or "available" in client_features
        self._has_stale = not client_features or "rounds_since_selected" in client_features
        self.stats: Counter[str] = Counter()
        self._header = self._make_header()

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_env(cls, env: Any, config: CodecConfig | None = None) -> TextCodec:
        """Build the codec of a qflgym env (a ``gym.Env``, a wrapper or a ``VecEnv``)."""
        from qflgym.agents.controllers import env_attr

        layout = env_attr(env, "layout")
        action_codec = env_attr(env, "action_codec")
        lr_map = _env_attr_or_none(env, "lr_map")
        base_lr = lr_map.base_lr if lr_map is not None else None
        env_config = _env_attr_or_none(env, "config")
        steps_range = getattr(env_config, "local_steps_range", None)
        max_steps = int(steps_range[1]) if steps_range is not None else None
        spec = ActionSpec.from_action_codec(action_codec, base_lr=base_lr, max_steps=max_steps)
        return cls(spec, layout, action_codec, config)

    # --------------------------------------------------------------------------------------------- prompts
    def _make_header(self) -> str:
        s = self.spec
        tasks = []
        if s.select:
            k = "" if s.max_selected is None else f" (at most {s.max_selected})"
            tasks.append(f"Choose the clients that train this round{k}.")
        if s.lr:
            lo, hi = s.lr_range
            tasks.append(f"Set lr in [{format_lr(lo, 3)}, {format_lr(hi, 3)}]")
        if s.steps:
            lo, hi = s.steps_range
            tasks.append(f"and local steps in [{lo}, {hi}]." if s.lr else f"Set local steps in [{lo}, {hi}].")
        elif s.lr:
            tasks[-1] += "."
        if s.stop:
            tasks.append("Stop now or continue?")
        return " ".join(tasks)

    def format_hint(self) -> str:
        """The one-line grammar reminder (``reply: select <ids>|none | stop yes|no``)."""
        parts = {
            "select": "select <ids>|none",
            "lr": "lr <x>",
            "steps": "steps <n>",
            "stop": "stop yes|no",
        }
        return "reply: " + " | ".join(parts[f] for f in self.spec.fields)

    def prompt(self, obs: np.ndarray) -> str:
        """The prompt for one flat observation (ends with ``"action:"``; the completion starts with a space)."""
        obs = np.asarray(obs)
        d = self.config.decimals
        lines = []
        round_text = ""
        if self._has_round:
            round_text = f", round {format_number(float(self.layout.global_(obs, _ROUND_FEATURE)), d)} of the budget"
        lines.append(f"QFL control{round_text}. {self._header}")
        items = []
        for label, feature in self.global_columns.items():
            value = float(self.layout.global_(obs, feature))
            if label == "lr" and feature == "learning_rate":
                items.append(f"lr {format_lr(self.spec.base_lr * 10.0**value, 3)}")
            elif label == "steps" and feature == "local_steps":
                items.append(f"steps {round(value * self.spec.max_steps)}")
            else:
                items.append(f"{label} {format_number(value, d)}")
        lines.append(" ".join(items))
        relative = self.config.client_scale == "relative"
        lines.append("id " + " ".join(self.client_columns) + (" (0-9: lowest-highest this round)" if relative else ""))
        cols = []
        for feature in self.client_columns.values():
            values = np.nan_to_num(np.asarray(self.layout.client(obs, feature), dtype=np.float64))
            if relative and feature not in _INTEGER_FEATURES:
                lo, hi = float(values.min()), float(values.max())
                values = np.rint(9 * (values - lo) / (hi - lo)) if hi > lo else np.zeros_like(values)
            cols.append((relative or feature in _INTEGER_FEATURES, values))
        for i in range(self.spec.n_clients):
            cells = [str(i)]
            for integral, values in cols:
                v = float(values[i])
                cells.append(str(round(v)) if integral else format_number(v, d))
            lines.append(" ".join(cells))
        if self.config.format_hint:
            lines.append(self.format_hint())
        lines.append("action:")
        return "\n".join(lines)

    def prompts(self, observations: np.ndarray) -> list[str]:
        """Prompts for a batch ``[B, D]`` of flat observations."""
        return [self.prompt(o) for o in np.asarray(observations)]

    # ------------------------------------------------------------------------------------------ rendering
    def render(self, decision: Any) -> str:
        """The canonical completion of ``decision`` (leading space included)."""
        parts = []
        s = self.spec
        if s.select:
            ids = [] if decision.selected is None else [int(i) for i in np.flatnonzero(decision.selected)]
            parts.append("select " + (" ".join(map(str, ids)) if ids else "none"))
        if s.lr:
            parts.append("lr " + format_lr(self._snap_lr(float(decision.lr)), self.config.lr_digits))
        if s.steps:
            parts.append(f"steps {int(decision.local_steps)}")
        if s.stop:
            parts.append("stop " + ("yes" if decision.stop else "no"))
        return " " + " | ".join(parts)

    def render_action(self, action: Any) -> str:
        """The canonical completion of an env action (decoded with the env's action codec)."""
        return self.render(self.action_codec.decode(action))

    def _snap_lr(self, lr: float) -> float:
        grid = self.spec.lr_grid
        if grid is None or not math.isfinite(lr) or lr <= 0:
            return lr
        logs = np.log(np.asarray(grid))
        return float(grid[int(np.argmin(np.abs(logs - math.log(lr))))])

    # -------------------------------------------------------------------------------------------- parsing
    def fallback(self, obs: np.ndarray | None = None) -> Any:
        """The documented fallback decision for ``obs`` (see the module docstring)."""
        return self._build(obs, {})

    def _current_lr(self, obs: np.ndarray | None) -> float:
        lo, hi = self.spec.lr_range
        lr = self.spec.base_lr
        if obs is not None and "learning_rate" in getattr(self.layout, "global_features", ()):
            lr = self.spec.base_lr * 10.0 ** float(self.layout.global_(obs, "learning_rate"))
        return self._snap_lr(min(hi, max(lo, lr)))

    def _current_steps(self, obs: np.ndarray | None) -> int:
        lo, hi = self.spec.steps_range
        steps = lo
        if obs is not None and "local_steps" in getattr(self.layout, "global_features", ()):
            steps = round(float(self.layout.global_(obs, "local_steps")) * self.spec.max_steps)
        return int(min(hi, max(lo, steps)))

    def _available(self, obs: np.ndarray | None) -> np.ndarray:
        if obs is None or not self._has_avail:
            return np.ones(self.spec.n_clients, dtype=bool)
        return np.asarray(self.layout.client(obs, "available")) > 0.5

    def _fallback_selection(self, obs: np.ndarray | None) -> np.ndarray:
        n = self.spec.n_clients
        if self.config.fallback_select == "none":
            return np.zeros(n, dtype=bool)
        avail = self._available(obs)
        k = self.spec.max_selected
        if k is None or avail.sum() <= k:
            return avail
        stale = (
            np.asarray(self.layout.client(obs, "rounds_since_selected"), dtype=np.float64)
            if obs is not None and self._has_stale
            else np.zeros(n)
        )
        order = sorted(np.flatnonzero(avail), key=lambda i: (-stale[i], i))[:k]
        mask = np.zeros(n, dtype=bool)
        mask[order] = True
        return mask

    def _build(self, obs: np.ndarray | None, parsed: Mapping[str, Any]) -> Any:
        s = self.spec
        cls = _decision_class()
        selected = None
        if s.select:
            selected = parsed["select"] if "select" in parsed else self._fallback_selection(obs)
        lr = local_steps = None
        if s.lr:
            lr = parsed["lr"] if "lr" in parsed else self._current_lr(obs)
        elif self.action_codec is not None:
            lr = getattr(self.action_codec, "lr", None)
        if s.steps:
            local_steps = parsed["steps"] if "steps" in parsed else self._current_steps(obs)
        elif self.action_codec is not None:
            local_steps = getattr(self.action_codec, "local_steps", None)
        stop = bool(parsed.get("stop", False)) if s.stop else False
        return cls(selected=selected, lr=lr, local_steps=local_steps, stop=stop)

    def parse(self, completion: str, obs: np.ndarray | None = None, *, count: bool = True) -> ParseResult:
        """Parse one completion into a decision; never raises.

        Args:
            completion: Generated text (anything).
            obs: The observation it answers (for availability and fallbacks); ``None``: all available.
            count: Update :attr:`stats`.

        Returns:
            A :class:`ParseResult`; invalid fields take their fallback (module docstring).
        """
        text = completion if isinstance(completion, str) else str(completion)
        line = _first_action_line(text.lower())
        parsed: dict[str, Any] = {}
        errors: list[str] = []
        masked: list[int] = []
        s = self.spec
        if s.select:
            ids, err = _parse_ids(line, s.n_clients)
            if err is None and ids is not None:
                avail = self._available(obs)
                masked = [i for i in ids if not avail[i]]
                ids = [i for i in ids if avail[i]]
                if s.max_selected is not None and len(ids) > s.max_selected:
                    err = f"select: {len(ids)} ids > budget {s.max_selected}"
                    ids = ids[: s.max_selected]
                mask = np.zeros(s.n_clients, dtype=bool)
                mask[ids] = True
                parsed["select"] = mask
            if err is not None:
                errors.append(err)
        if s.lr:
            value, err = _parse_float(line, "lr", s.lr_range)
            if err is None:
                parsed["lr"] = self._snap_lr(value)
            else:
                errors.append(err)
        if s.steps:
            value, err = _parse_int(line, "steps?", s.steps_range)
            if err is None:
                parsed["steps"] = value
            else:
                errors.append(err)
        if s.stop:
            m = re.search(r"\bstop\b\s*[:=]?\s*(yes|no|true|false|1|0)\b", line)
            if m:
                parsed["stop"] = m.group(1) in ("yes", "true", "1")
            else:
                errors.append("stop: missing or malformed")
        decision = self._build(obs, parsed)
        result = ParseResult(decision, not errors, errors, masked)
        result.strict = result.valid and not masked and text.split("\n")[0].rstrip() == self.render(decision)
        if count:
            self.stats["completions"] += 1
            self.stats["invalid"] += int(not result.valid)
            self.stats["masked"] += int(bool(masked))
            for e in errors:
                self.stats["error:" + e.split(":")[0]] += 1
        return result

    def to_action(self, completion: str, obs: np.ndarray | None = None) -> tuple[Any, ParseResult]:
        """Parse ``completion`` and encode the decision with the env's action codec."""
        result = self.parse(completion, obs)
        return self.action_codec.encode(result.decision), result

    @property
    def invalid_rate(self) -> float:
        """Fraction of parsed completions that were invalid (0 before any)."""
        n = self.stats["completions"]
        return self.stats["invalid"] / n if n else 0.0

    def reset_stats(self) -> None:
        """Zero the counters."""
        self.stats.clear()


# ------------------------------------------------------------------------------------------------ parsing


def _first_action_line(text: str) -> str:
    """The first non-empty line that mentions a keyword (or the first line), ``</s>``-style tokens stripped."""
    text = re.sub(r"<[^>]{1,20}>", " ", text)
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    for ln in lines:
        if re.search(r"\b(select|lr|steps?|stop)\b", ln):
            return ln
    return lines[0] if lines else ""


def _parse_ids(line: str, n: int) -> tuple[list[int] | None, str | None]:
    m = re.search(r"\bselect(?:ed)?\b\s*[:=]?\s*(.*)", line)
    if not m:
        return None, "select: missing"
    rest = re.split(r"\||\b(?:lr|steps?|stop)\b", m.group(1))[0].strip()
    if re.fullmatch(r"(none|nothing|-|\[\s*\])", rest):
        return [], None
    rest = rest.strip("[]() ")
    tokens = [t for t in re.split(r"[\s,;]+", rest) if t]
    if not tokens:
        return None, "select: no ids"
    ids: list[int] = []
    for t in tokens:
        if not re.fullmatch(r"\d{1,6}", t):
            return None, "select: malformed id"
        i = int(t)
        if i >= n:
            return None, "select: id out of range"
        if i not in ids:
            ids.append(i)
    return ids, None


def _parse_float(line: str, key: str, bounds: tuple[float, float]) -> tuple[float, str | None]:
    m = re.search(rf"\b{key}\b\s*[:=]?\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)", line)
    if not m:
        return math.nan, f"{key}: missing or malformed"
    value = float(m.group(1))
    lo, hi = bounds
    # Allow the rounding of a printed bound (e.g. "0.002" for 0.0019999).
    if not math.isfinite(value) or not (lo * (1 - 1e-3) <= value <= hi * (1 + 1e-3)):
        return value, f"{key}: out of range"
    return min(hi, max(lo, value)), None


def _parse_int(line: str, key: str, bounds: tuple[int, int]) -> tuple[int, str | None]:
    m = re.search(rf"\b{key}\b\s*[:=]?\s*([-+]?\d+)\b", line)
    name = key.rstrip("?")
    if not m:
        return 0, f"{name}: missing or malformed"
    value = int(m.group(1))
    if not bounds[0] <= value <= bounds[1]:
        return value, f"{name}: out of range"
    return value, None


def _env_attr_or_none(env: Any, name: str) -> Any:
    from qflgym.agents.controllers import env_attr

    try:
        return env_attr(env, name)
    except AttributeError:
        return None


# --------------------------------------------------------------------------------------- synthetic corpus


def synthetic_corpus(n: int = 400, seed: int = 0) -> Iterator[str]:
    """Yield ``n`` prompt+completion texts in the codec's format from random observations (any env kind).

    Used to train the tiny model's tokenizer offline; deterministic given ``seed``.
    """
    rng = np.random.default_rng(seed)
    client_features = tuple(DEFAULT_CLIENT_COLUMNS.values())
    global_features = (_ROUND_FEATURE, *DEFAULT_GLOBAL_COLUMNS.values())
    kinds = [
        dict(select=True),
        dict(select=False, lr=True, steps=True),
        dict(select=False, stop=True),
        dict(select=True, lr=True, steps=True, stop=True),
    ]
    for j in range(n):
        n_clients = int(rng.integers(2, 21))
        kind = kinds[j % len(kinds)]
        spec = ActionSpec(n_clients=n_clients, lr_range=(0.002, 2.0), steps_range=(1, 8), base_lr=0.2, **kind)
        layout = _PlainLayout(n_clients, client_features, global_features)
        codec = TextCodec(spec, layout, None, CodecConfig())
        obs = rng.uniform(0, 1, layout.client_size + len(global_features))
        obs[[client_features.index("available") + i * len(client_features) for i in range(n_clients)]] = (
            rng.uniform(size=n_clients) < 0.8
        )
        selected = rng.uniform(size=n_clients) < 0.3
        words = [
            "select",
            " ".join(map(str, np.flatnonzero(selected))) or "none",
            "| lr",
            format_lr(float(np.exp(rng.uniform(np.log(0.002), np.log(2.0)))), 4),
            "| steps",
            str(int(rng.integers(1, 9))),
            "| stop",
            "yes" if rng.uniform() < 0.2 else "no",
        ]
        yield codec.prompt(obs) + " " + " ".join(words)
