"""The text codec of one env (:class:`TextCodec`).

Observation → prompt, decision ↔ completion, with fallbacks and counters. The prompt format and the completion
grammar are described in :mod:`qflgym.agents.llm.codec`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from qflgym.agents.controllers.base import env_attr
from qflgym.agents.llm.codec.parsing import first_action_line, parse_float, parse_ids, parse_int
from qflgym.agents.llm.codec.spec import (
    DEFAULT_CLIENT_COLUMNS,
    DEFAULT_GLOBAL_COLUMNS,
    INTEGER_FEATURES,
    LABEL_MIX,
    LABEL_MIX_SHARE,
    ROUND_FEATURE,
    V1_CLIENT_COLUMNS,
    V1_GLOBAL_COLUMNS,
    ActionSpec,
    CodecConfig,
    ParseResult,
    format_lr,
    format_number,
)
from qflgym.config import ConfigError
from qflgym.envs.actions import ControlDecision

__all__ = ["TextCodec"]


def _columns(
    name: str, chosen: Mapping[str, str] | None, defaults: Mapping[str, str], features: set[str]
) -> dict[str, str]:
    """The ``header → feature`` columns of one table.

    ``chosen`` is checked against the env's features; ``None`` takes the defaults this env has. An empty
    ``features`` (a layout without names) keeps every column.

    Raises:
        ConfigError: ``chosen`` names a feature the env does not have.
    """
    if chosen and features:
        unknown = sorted(set(chosen.values()) - features)
        if unknown:
            raise ConfigError(f"{name} names features {unknown} this env does not have; allowed: {sorted(features)}")
    return {h: f for h, f in (chosen or defaults).items() if not features or f in features}


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
        self.config = config or CodecConfig()
        size = self.config.cohort_size
        if size is not None:
            if not spec.select:
                raise ConfigError("cohort_size needs an env that selects clients; this one does not")
            if size > spec.most_selected:
                raise ConfigError(
                    f"cohort_size must be in [1, {spec.most_selected}] (the env's selection budget), got {size}"
                )
            spec = dataclasses.replace(spec, min_selected=size, max_selected=size)
        self.spec = spec
        self.layout = layout
        self.action_codec = action_codec
        client_features = set(getattr(layout, "client_features", ()))
        global_features = set(getattr(layout, "global_features", ()))
        self._label_features = sorted(
            (f for f in client_features if f.startswith("label_frac_")), key=lambda f: int(f.rsplit("_", 1)[1])
        )
        if self._label_features:
            client_features.add(LABEL_MIX)
        v1 = "step_time" in client_features
        self.client_columns = _columns(
            "client_columns",
            self.config.client_columns,
            DEFAULT_CLIENT_COLUMNS | (V1_CLIENT_COLUMNS if v1 else {}),
            client_features,
        )
        self.global_columns = _columns(
            "global_columns",
            self.config.global_columns,
            DEFAULT_GLOBAL_COLUMNS | (V1_GLOBAL_COLUMNS if v1 else {}),
            global_features,
        )
        self._has_round = not global_features or ROUND_FEATURE in global_features
        self._has_avail = not client_features or "available" in client_features
        self._has_stale = not client_features or "rounds_since_selected" in client_features
        self.stats: Counter[str] = Counter()
        self._header = self._make_header()

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_env(cls, env: Any, config: CodecConfig | None = None) -> TextCodec:
        """Build the codec of a qflgym env (a ``gym.Env``, a wrapper or a ``VecEnv``)."""
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
            k = ""
            if s.max_selected is not None:
                k = f" ({'exactly' if s.min_selected == s.max_selected else 'at most'} {s.max_selected})"
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
            round_text = f", round {format_number(float(self.layout.global_(obs, ROUND_FEATURE)), d)} of the budget"
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
            if feature == LABEL_MIX:
                cols.append(self._label_mix(obs))
                continue
            values = np.nan_to_num(np.asarray(self.layout.client(obs, feature), dtype=np.float64))
            if relative and feature not in INTEGER_FEATURES:
                lo, hi = float(values.min()), float(values.max())
                values = np.rint(9 * (values - lo) / (hi - lo)) if hi > lo else np.zeros_like(values)
            integral = relative or feature in INTEGER_FEATURES
            cols.append([str(round(float(v))) if integral else format_number(float(v), d) for v in values])
        for i in range(self.spec.n_clients):
            lines.append(" ".join([str(i), *(cells[i] for cells in cols)]))
        if self.config.format_hint:
            lines.append(self.format_hint())
        lines.append("action:")
        return "\n".join(lines)

    def _label_mix(self, obs: np.ndarray) -> list[str]:
        """Per client, the :data:`LABEL_MIX` cell: its classes with >= :data:`LABEL_MIX_SHARE` of its data."""
        fracs = np.stack([np.asarray(self.layout.client(obs, f), dtype=np.float64) for f in self._label_features], 1)
        cells = []
        for row in np.nan_to_num(fracs):
            order = [j for j in np.argsort(-row, kind="stable") if row[j] >= LABEL_MIX_SHARE]
            cells.append("".join(str(j) for j in order) or "-")
        return cells

    def prompts(self, observations: np.ndarray) -> list[str]:
        """Prompts for a batch ``[B, D]`` of flat observations."""
        return [self.prompt(o) for o in np.asarray(observations)]

    def client_row_ends(self, prompt: str) -> list[int]:
        """Character offsets just past each client row of a :meth:`prompt` (client 0 first).

        The rows are the :attr:`spec` ``.n_clients`` lines after the table header (the line starting ``"id "``).

        Raises:
            ValueError: If ``prompt`` has no client table of that many rows.
        """
        n = self.spec.n_clients
        lines = prompt.split("\n")
        header = next((i for i, line in enumerate(lines) if line.startswith("id ")), None)
        if header is None or len(lines) < header + 1 + n:
            raise ValueError(f"prompt has no client table of {n} rows")
        ends, offset = [], 0
        for i, line in enumerate(lines[: header + 1 + n]):
            offset += len(line)
            if i > header:
                ends.append(offset)
            offset += 1  # the newline
        return ends

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

    def available(self, obs: np.ndarray | None) -> np.ndarray:
        """``[N]`` bool: the clients ``obs`` marks available (all of them without the feature or an ``obs``)."""
        if obs is None or not self._has_avail:
            return np.ones(self.spec.n_clients, dtype=bool)
        return np.asarray(self.layout.client(obs, "available")) > 0.5

    def _fallback_selection(self, obs: np.ndarray | None) -> np.ndarray:
        n = self.spec.n_clients
        if self.config.fallback_select == "none":
            return np.zeros(n, dtype=bool)
        avail = self.available(obs)
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
        return ControlDecision(selected=selected, lr=lr, local_steps=local_steps, stop=stop)

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
        line = first_action_line(text.lower())
        parsed: dict[str, Any] = {}
        errors: list[str] = []
        masked: list[int] = []
        s = self.spec
        if s.select:
            ids, err = parse_ids(line, s.n_clients)
            if err is None and ids is not None and len(ids) < s.min_selected:
                err = f"select: {len(ids)} ids < cohort size {s.min_selected}"
            if err is None and ids is not None:
                avail = self.available(obs)
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
            value, err = parse_float(line, "lr", s.lr_range)
            if err is None:
                parsed["lr"] = self._snap_lr(value)
            else:
                errors.append(err)
        if s.steps:
            value, err = parse_int(line, "steps?", s.steps_range)
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


def _env_attr_or_none(env: Any, name: str) -> Any:
    try:
        return env_attr(env, name)
    except AttributeError:
        return None
