"""Run folders: the one writer of the record every training run and benchmark leaves next to its results.

Every run folder (``qflgym train``, ``qflgym bench``, ``qflgym llm sft|grpo``) starts with the same three files,
written by :func:`write_run_record`:

``config.yaml``
    Every resolved setting of the run (YAML; a benchmark's is its resolved suite, re-runnable as it is).
``command.txt``
    The command line, optionally followed by an equivalent command with every setting explicit.
``run.json``
    ``{"versions": {package: version}, ...}``: the Python and package versions, plus what the caller adds about
    where the run ran (e.g. a benchmark's Ray cluster address).

Callers add their own artifacts (models, tables, plots) beside these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CONFIG_FILE",
    "RUN_FILE",
    "VERSIONED_PACKAGES",
    "package_versions",
    "result_record_dir",
    "to_yaml_safe",
    "write_result_record",
    "write_run_record",
]

#: The resolved settings of a run.
CONFIG_FILE = "config.yaml"

#: Versions and where the run ran.
RUN_FILE = "run.json"

#: Packages whose versions every run records (the ones not installed are left out).
VERSIONED_PACKAGES: tuple[str, ...] = (
    "qflgym",
    "numpy",
    "torch",
    "pennylane",
    "gymnasium",
    "stable-baselines3",
    "sb3-contrib",
    "ray",
    "transformers",
    "peft",
    "trl",
)


def package_versions(packages: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """``{"python": ..., package: version}`` for every installed package of ``packages``."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in packages:
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def to_yaml_safe(value: Any) -> Any:
    """``value`` as plain YAML data: dataclasses and mappings become dicts, numpy scalars numbers, others text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_yaml_safe(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_yaml_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_yaml_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "ndim", None) == 0:
        return to_yaml_safe(item())
    return str(value)


def write_run_record(
    run_dir: str | Path,
    config: Any,
    argv: Sequence[str] | None = None,
    *,
    equivalent_command: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Create ``run_dir`` and write ``config.yaml``, ``command.txt`` and ``run.json`` into it.

    Args:
        run_dir: The run folder (created with its parents).
        config: The resolved settings (a mapping or a dataclass).
        argv: The command line to record (default ``sys.argv``).
        equivalent_command: A command with every setting explicit, recorded under the invoked one.
        extra: More about where the run ran, merged into ``run.json`` beside ``versions``.

    Returns:
        The run folder.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(to_yaml_safe(config), sort_keys=False))
    command = shlex.join(list(sys.argv if argv is None else argv)) + "\n"
    if equivalent_command:
        command += f"# equivalent, every setting explicit:\n{equivalent_command}\n"
    (run_dir / "command.txt").write_text(command)
    record = {"versions": package_versions(), **to_yaml_safe(dict(extra or {}))}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return run_dir


def result_record_dir(result: str | Path) -> Path:
    """The run folder of a benchmark's result file: beside it, named after it (``out/x.json`` -> ``out/x/``).

    One folder per result, so results written into one folder keep their own records.
    """
    result = Path(result)
    return result.parent / result.stem


def write_result_record(result: str | Path, args: Any, argv: Sequence[str] | None = None) -> Path:
    """Write the run record of the benchmark whose ``--json`` is ``result`` (see :func:`result_record_dir`).

    Args:
        result: The result file's path.
        args: The parsed command line (an ``argparse.Namespace``), recorded as ``{"args": ...}``.
        argv: The command line (default ``sys.argv``).

    Returns:
        The run folder.
    """
    return write_run_record(result_record_dir(result), {"args": vars(args) | {"json": str(result)}}, argv)
