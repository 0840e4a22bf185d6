"""Config dataclasses as command lines (CleanRL/TRL style), and the run folder that records them.

* :func:`add_dataclass_arguments` / :func:`dataclass_from_args` -- a config dataclass whose fields carry
  ``metadata={"help": ...}`` doubles as the command line; ``--config FILE.yaml`` supplies defaults that explicit
  flags override.
* :func:`prepare_run_dir` -- ``<out>/<kind>/<env>__<model>__s<seed>__<time>/`` with the run record of
  :func:`qflgym.runs.write_run_record` (``config.yaml``, ``command.txt`` with the equivalent explicit command,
  ``run.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from qflgym.config import ConfigError, load_yaml
from qflgym.runs import write_run_record

__all__ = ["add_dataclass_arguments", "config_command", "dataclass_from_args", "prepare_run_dir"]


def _base_type(tp: Any) -> tuple[Any, bool]:
    """The non-None member of an ``X | None`` annotation, and whether ``None`` is allowed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _parse_value(tp: Any) -> Any:
    base, optional = _base_type(tp)
    origin = typing.get_origin(base)

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")
        if base in (int, float, str):
            return base(text)
        if origin in (dict, list) or base in (dict, list):
            value = yaml.safe_load(text) if not Path(text).is_file() else yaml.safe_load(Path(text).read_text())
            return value
        return text

    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--field-name`` option per field of the config dataclass ``cls`` (help from metadata).

    Defaults are left unset (``argparse.SUPPRESS``) so :func:`dataclass_from_args` can tell explicit flags from
    defaults; ``--config FILE`` (YAML) is added too.
    """
    parser.add_argument("--config", help="YAML file of config values (flags given explicitly override it)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else "(computed)"
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_parse_value(hints[f.name]),
            default=argparse.SUPPRESS,
            metavar=f.metadata.get("metavar", "X"),
            help=f"{help_text} (default: {default})",
        )


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from a ``--config`` file (if any) overridden by the explicit flags in ``args``."""
    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        path = Path(config_file)
        loaded = load_yaml(path, "config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(unknown)} in {path}; allowed: {', '.join(sorted(names))}")
        values.update(loaded)
    for f in dataclasses.fields(cls):
        if f.name in vars(args):
            values[f.name] = getattr(args, f.name)
    return cls(**values)


def config_command(kind: str, config: Any) -> str:
    """The ``qflgym llm <kind>`` command line that reproduces ``config`` (every field explicit)."""
    parts = ["qflgym", "llm", kind]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, (dict, list)):
            text = json.dumps(value)
        elif value is None:
            text = "none"
        else:
            text = str(value)
        parts += ["--" + f.name.replace("_", "-"), text]
    return shlex.join(parts)


def prepare_run_dir(
    out: str | Path, kind: str, config: Any, run_name: str | None = None, argv: Sequence[str] | None = None
) -> Path:
    """Create the run directory and write its record (:func:`qflgym.runs.write_run_record`).

    Args:
        out: Parent folder (e.g. ``runs/llm``).
        kind: ``sft`` or ``grpo``.
        config: The resolved config dataclass (needs ``env_id``, ``model`` and ``seed`` fields).
        run_name: Directory name (default ``<env>__<model>__s<seed>__<time>``).
        argv: The command line to record (default ``sys.argv``).
    """
    if run_name is None:
        model = Path(str(config.model)).name
        run_name = f"{config.env_id.replace('/', '-')}__{model}__s{config.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    return write_run_record(Path(out) / kind / run_name, config, argv, equivalent_command=config_command(kind, config))
