"""Lenient parsing of one completion line: the ``select``, ``lr``, ``steps`` fields (``stop`` is parsed by the codec).

Each parser returns ``(value, None)`` or ``(value, reason)``; the reason is ``"<field>: <what is wrong>"``.
"""

from __future__ import annotations

import math
import re

__all__ = ["first_action_line", "parse_float", "parse_ids", "parse_int"]


def first_action_line(text: str) -> str:
    """The first non-empty line that mentions a keyword (or the first line), ``</s>``-style tokens stripped."""
    text = re.sub(r"<[^>]{1,20}>", " ", text)
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    for ln in lines:
        if re.search(r"\b(select|lr|steps?|stop)\b", ln):
            return ln
    return lines[0] if lines else ""


def parse_ids(line: str, n: int) -> tuple[list[int] | None, str | None]:
    """The ids after ``select`` (``[]`` for ``none``) and ``None``, or ``None`` and why they are invalid."""
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


def parse_float(line: str, key: str, bounds: tuple[float, float]) -> tuple[float, str | None]:
    """The number after ``key`` and ``None``, or the number (NaN if missing) and why it is invalid."""
    m = re.search(rf"\b{key}\b\s*[:=]?\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)", line)
    if not m:
        return math.nan, f"{key}: missing or malformed"
    value = float(m.group(1))
    lo, hi = bounds
    # Allow the rounding of a printed bound (e.g. "0.002" for 0.0019999).
    if not math.isfinite(value) or not (lo * (1 - 1e-3) <= value <= hi * (1 + 1e-3)):
        return value, f"{key}: out of range"
    return min(hi, max(lo, value)), None


def parse_int(line: str, key: str, bounds: tuple[int, int]) -> tuple[int, str | None]:
    """The integer after ``key`` (a regex) and ``None``, or the integer (0 if missing) and why it is invalid."""
    m = re.search(rf"\b{key}\b\s*[:=]?\s*([-+]?\d+)\b", line)
    name = key.rstrip("?")
    if not m:
        return 0, f"{name}: missing or malformed"
    value = int(m.group(1))
    if not bounds[0] <= value <= bounds[1]:
        return value, f"{name}: out of range"
    return value, None
