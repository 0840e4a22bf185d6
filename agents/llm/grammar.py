"""The completion grammar as a character automaton, and its token-level form for constrained decoding.

:class:`ActionGrammar` accepts exactly the canonical completions of :class:`~qflgym.agents.llm.codec.TextCodec`
for one env (see the grammar in :mod:`qflgym.agents.llm.codec`), with values in range: client ids ascending and
below N (at most ``k`` of them), the learning rate within the env's range (or one of its grid values), local steps
within range. States are hashable, so :class:`TokenConstraint` caches, per state, which vocabulary tokens may come
next and where each leads: after a warm-up the per-token cost of the constraint is a dict lookup.

The automaton is a small NFA over segments (a literal, an id list, a number, a choice of words); its state is the
frozenset of live ``(segment, sub-state)`` pairs, which resolves the one ambiguity of the grammar (a space after an
id either starts the next id or the ``" | "`` before the next field).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from qflgym.agents.llm.codec import ActionSpec, format_lr

__all__ = ["ActionGrammar", "TokenConstraint"]

_DIGITS = "0123456789"


class _Literal:
    def __init__(self, text: str) -> None:
        self.text = text

    def start(self) -> Any:
        return 0

    def advance(self, sub: int, ch: str) -> Any:
        return sub + 1 if sub < len(self.text) and self.text[sub] == ch else None

    def accepting(self, sub: int) -> bool:
        return sub == len(self.text)


class _Choice:
    def __init__(self, options: Sequence[str]) -> None:
        self.options = tuple(options)

    def start(self) -> Any:
        return ""

    def advance(self, sub: str, ch: str) -> Any:
        nxt = sub + ch
        return nxt if any(o.startswith(nxt) for o in self.options) else None

    def accepting(self, sub: str) -> bool:
        return sub in self.options


def _int_feasible(prefix: str, lo: int, hi: int, max_len: int) -> bool:
    """Whether some digit string starting with ``prefix`` (no leading zero, length <= max_len) is in [lo, hi]."""
    if prefix.startswith("0") and len(prefix) > 1:
        return False
    p = int(prefix)
    if prefix == "0":
        return lo <= 0 <= hi
    for extra in range(max_len - len(prefix) + 1):
        low, high = p * 10**extra, p * 10**extra + 10**extra - 1
        if low <= hi and high >= lo:
            return True
    return False


class _IdList:
    """``none`` or ascending ids ``< n`` separated by single spaces, ``min_count`` to ``max_count`` of them.

    An id is only accepted where enough larger ids remain for the ones still owed (no dead ends), and ``none``
    only where ``min_count`` is 0.
    """

    def __init__(self, n: int, max_count: int | None, min_count: int = 0) -> None:
        self.n = n
        self.max_count = max_count if max_count is not None else n
        self.min_count = min_count
        self.width = len(str(n - 1))

    def start(self) -> Any:
        return ("start", -1, "", 0)

    def _highest(self, count: int) -> int:
        """The largest id that the ``count``-th (0-based) id may be and still leave room for the ones owed."""
        return self.n - 1 - max(0, self.min_count - count - 1)

    def advance(self, sub: tuple, ch: str) -> Any:
        phase, last, cur, count = sub
        if phase == "start" and ch == "n" and self.min_count == 0:
            return ("none", -1, "n", 0)
        if phase == "none":
            nxt = cur + ch
            return ("none", -1, nxt, 0) if "none".startswith(nxt) else None
        if phase in ("start", "sep") and ch in _DIGITS:
            if count >= self.max_count:
                return None
            return ("num", last, ch, count) if _int_feasible(ch, last + 1, self._highest(count), self.width) else None
        if phase == "num":
            if ch in _DIGITS:
                nxt = cur + ch
                if len(nxt) <= self.width and _int_feasible(nxt, last + 1, self._highest(count), self.width):
                    return ("num", last, nxt, count)
                return None
            if ch == " " and self._complete(last, cur) and int(cur) < self.n - 1 and count + 1 < self.max_count:
                return ("sep", int(cur), "", count + 1)  # only when another id can still follow
        return None

    def _complete(self, last: int, cur: str) -> bool:
        return bool(cur) and (cur == "0" or not cur.startswith("0")) and last < int(cur) < self.n

    def accepting(self, sub: tuple) -> bool:
        phase, last, cur, count = sub
        if phase == "none":
            return cur == "none"
        return phase == "num" and self._complete(last, cur) and count + 1 >= self.min_count


class _Decimal:
    """A positional decimal (``0.05``, ``1``, ``1.5``) within ``[lo, hi]`` with at most ``frac`` decimals."""

    def __init__(self, lo: float, hi: float, frac: int) -> None:
        self.lo = lo * (1 - 1e-3)
        self.hi = hi * (1 + 1e-3)
        self.frac = frac
        self.int_width = max(1, len(str(int(hi))))

    def start(self) -> Any:
        return ""

    def _bounds(self, s: str) -> tuple[float, float]:
        if "." in s:
            head, tail = s.split(".")
            low = float(f"{head or '0'}.{tail or '0'}")
            high = float(f"{head or '0'}.{tail}{'9' * (self.frac - len(tail))}") if len(tail) < self.frac else low
            return low, high
        low = float(s)
        high = float(s + "9" * (self.int_width - len(s)) + "." + "9" * self.frac)
        return low, high

    def advance(self, sub: str, ch: str) -> Any:
        nxt = sub + ch
        if ch == ".":
            if not sub or "." in sub:
                return None
        elif ch in _DIGITS:
            if "." in sub:
                if len(sub.split(".")[1]) >= self.frac:
                    return None
            elif sub == "0" or len(sub) >= self.int_width:
                return None
        else:
            return None
        low, high = self._bounds(nxt)
        return nxt if low <= self.hi and high >= self.lo else None

    def accepting(self, sub: str) -> bool:
        if not sub or sub.endswith("."):
            return False
        return self.lo <= float(sub) <= self.hi


class _Int:
    """A decimal integer in ``[lo, hi]`` without leading zeros."""

    def __init__(self, lo: int, hi: int) -> None:
        self.ilo, self.ihi = lo, hi
        self.width = len(str(hi))

    def start(self) -> Any:
        return ""

    def advance(self, sub: str, ch: str) -> Any:
        if ch not in _DIGITS:
            return None
        nxt = sub + ch
        return nxt if len(nxt) <= self.width and _int_feasible(nxt, self.ilo, self.ihi, self.width) else None

    def accepting(self, sub: str) -> bool:
        return bool(sub) and (sub == "0" or not sub.startswith("0")) and self.ilo <= int(sub) <= self.ihi


class ActionGrammar:
    """Character automaton of the canonical completions for one :class:`ActionSpec`.

    Args:
        spec: The env's action spec.
        lr_digits: Significant digits of the learning rate (as in the codec config).
    """

    def __init__(self, spec: ActionSpec, lr_digits: int | None = 4) -> None:
        self.spec = spec
        segments: list[Any] = []
        for i, name in enumerate(spec.fields):
            sep = " " if i == 0 else " | "
            if name == "select":
                segments += [_Literal(sep + "select "), _IdList(spec.n_clients, spec.max_selected, spec.min_selected)]
            elif name == "lr":
                segments.append(_Literal(sep + "lr "))
                if spec.lr_grid is not None:
                    segments.append(_Choice(sorted({format_lr(g, lr_digits) for g in spec.lr_grid})))
                else:
                    lo, hi = spec.lr_range
                    frac = (max(0, -math.floor(math.log10(lo))) + (lr_digits or 12)) if lo > 0 else 12
                    segments.append(_Decimal(lo, hi, frac))
            elif name == "steps":
                segments += [_Literal(sep + "steps "), _Int(*spec.steps_range)]
            elif name == "stop":
                segments += [_Literal(sep + "stop "), _Choice(("yes", "no"))]
        self.segments = segments
        chars = set(_DIGITS + ". |")
        for seg in segments:
            if isinstance(seg, _Literal):
                chars |= set(seg.text)
            elif isinstance(seg, _Choice):
                chars |= set("".join(seg.options))
            elif isinstance(seg, _IdList):
                chars |= set("none")
        self.alphabet = frozenset(chars)

    def _closure(self, configs: set[tuple[int, Any]]) -> frozenset[tuple[int, Any]]:
        out = set(configs)
        stack = list(configs)
        while stack:
            i, sub = stack.pop()
            if i + 1 < len(self.segments) and self.segments[i].accepting(sub):
                nxt = (i + 1, self.segments[i + 1].start())
                if nxt not in out:
                    out.add(nxt)
                    stack.append(nxt)
        return frozenset(out)

    def start(self) -> frozenset:
        """The start state."""
        return self._closure({(0, self.segments[0].start())})

    def advance(self, state: frozenset, text: str) -> frozenset | None:
        """The state after reading ``text`` from ``state``, or ``None`` if ``text`` leaves the grammar."""
        for ch in text:
            nxt = set()
            for i, sub in state:
                new = self.segments[i].advance(sub, ch)
                if new is not None:
                    nxt.add((i, new))
            if not nxt:
                return None
            state = self._closure(nxt)
        return state

    def accepting(self, state: frozenset) -> bool:
        """Whether a complete action has been read."""
        last = len(self.segments) - 1
        return any(i == last and self.segments[i].accepting(sub) for i, sub in state)

    def matches(self, text: str) -> bool:
        """Whether ``text`` is a complete canonical completion."""
        state = self.advance(self.start(), text)
        return state is not None and self.accepting(state)


def _token_strings(tokenizer: Any, alphabet: frozenset[str]) -> dict[int, str]:
    """Decoded text of the non-special tokens that can only spell characters of ``alphabet``.

    A cheap prefilter on the raw vocabulary (byte-level ``Ġ`` and SentencePiece ``▁`` both count as a space)
    keeps a few hundred to a few thousand tokens; each survivor is then decoded by the tokenizer itself, which
    is the text the model actually produces.
    """
    raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    allowed_raw = set(alphabet) | {"Ġ", "▁"}
    out: dict[int, str] = {}
    for i, t in enumerate(raw):
        if i in special or not t or len(t) > 16 or not set(t) <= allowed_raw:
            continue
        text = tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text and set(text) <= alphabet:
            out[i] = text
    return out


_STRINGS_CACHE: dict[tuple[int, frozenset[str]], dict[int, str]] = {}


class TokenConstraint:
    """Which tokens may follow a grammar state; caches per state.

    Args:
        grammar: The character automaton.
        tokenizer: The model's tokenizer (its vocabulary is filtered to the grammar's alphabet once).
    """

    def __init__(self, grammar: ActionGrammar, tokenizer: Any) -> None:
        self.grammar = grammar
        self.eos_token_id = int(tokenizer.eos_token_id)
        key = (id(tokenizer), grammar.alphabet)
        if key not in _STRINGS_CACHE:
            _STRINGS_CACHE[key] = _token_strings(tokenizer, grammar.alphabet)
        self.candidates = list(_STRINGS_CACHE[key].items())
        self._cache: dict[frozenset, tuple[torch.Tensor, list[frozenset | None]]] = {}

    def start(self) -> frozenset:
        """The grammar's start state."""
        return self.grammar.start()

    def allowed(self, state: frozenset) -> tuple[torch.Tensor, list[frozenset | None]]:
        """Token ids allowed after ``state`` (EOS last when the state accepts) and the state each leads to."""
        hit = self._cache.get(state)
        if hit is not None:
            return hit
        ids: list[int] = []
        nexts: list[frozenset | None] = []
        for i, s in self.candidates:
            nxt = self.grammar.advance(state, s)
            if nxt is not None:
                ids.append(i)
                nexts.append(nxt)
        if self.grammar.accepting(state):
            ids.append(self.eos_token_id)
            nexts.append(None)
        with torch.inference_mode(False):  # cached across calls: must not be an inference tensor
            result = (torch.tensor(ids, dtype=torch.long), nexts)
        self._cache[state] = result
        return result
