"""Argument helpers shared by the ``qflgym`` commands (and the ``llm`` group)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from qflgym.agents.cli.commands import UserInputError
from qflgym.config import preset_names, preset_path

__all__ = ["Column", "cell", "console", "mapping_arg", "metrics_table", "nan_mean", "suite_path"]

#: A column of a metrics table: ``(row key, header, format)``.
Column = tuple[str, str, str]


def mapping_arg(text: str | None, what: str) -> dict[str, Any]:
    """Parse a YAML/JSON mapping given inline or as a path to a file."""
    if not text:
        return {}
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
        text = path.read_text()
    value = yaml.safe_load(text)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserInputError(f"{what} must be a mapping (inline YAML like '{{k: 3}}' or a file), got {text!r}")
    return value


def suite_path(name: str) -> Path:
    """A suite file path, or the name of a packaged suite in ``configs/bench/``."""
    path = Path(name)
    if path.is_file():
        return path
    if path.suffix or os.sep in name:
        raise FileNotFoundError(f"bench suite not found: {path}")
    if name in preset_names("bench"):
        return preset_path("bench", name)
    raise FileNotFoundError(
        f"bench suite not found: {name!r} is neither a file nor a packaged suite ({', '.join(preset_names('bench'))})"
    )


def console() -> Any:
    """A ``rich`` console for the commands' output."""
    from rich.console import Console

    return Console()


def cell(value: float, fmt: str) -> str:
    """``value`` formatted with ``fmt``, or a dash when it is NaN or infinite (a metric that does not apply)."""
    return fmt.format(value) if math.isfinite(value) else "–"


def nan_mean(rows: Sequence[Mapping[str, float]], key: str) -> float:
    """Mean of ``key`` over the rows that have a finite value for it (NaN when none has)."""
    values = [float(r[key]) for r in rows if key in r and math.isfinite(float(r[key]))]
    return sum(values) / len(values) if values else math.nan


def metrics_table(title: str, columns: Sequence[Column], first: str | None = None) -> Any:
    """An empty ``rich`` table with right-justified metric columns (after a ``first`` label column, if given)."""
    from rich.table import Table

    table = Table(title=title)
    if first is not None:
        table.add_column(first)
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    return table
