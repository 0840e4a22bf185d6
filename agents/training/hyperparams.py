"""Hyperparameters in rl-baselines3-zoo's YAML format.

A file holds one mapping per env id, exactly as in the zoo's ``hyperparams/<algo>.yml``::

    QFL/ClientSelection-v0:
      n_envs: 2
      n_timesteps: !!float 1e5
      policy: 'MlpPolicy'
      learning_rate: lin_3e-4          # a schedule string: linear from 3e-4 to 0
      clip_range: 0.2
      policy_kwargs: "dict(net_arch=[64, 64])"

so the same files work with the zoo's own trainer (``python -m rl_zoo3.train --algo ppo --env
QFL/ClientSelection-v0 --gym-packages qflgym.envs --conf-file configs/agents/ppo.yml``).

Trainer keys (``n_envs``, ``n_timesteps``, ``policy``, ``normalize``) are separated from the algorithm's
keyword arguments; schedule strings ``lin_<x>`` become linear schedules, ``policy_kwargs`` strings are
evaluated in a namespace holding only ``dict`` and ``torch.nn`` (the zoo's convention), and every remaining
key is checked against the algorithm's constructor so a typo is an error that names the allowed keys.
"""

from __future__ import annotations

import ast
import copy
import difflib
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from qflgym.config import ConfigError, load_yaml, preset_path

__all__ = [
    "TRAINER_KEYS",
    "Hyperparams",
    "default_hyperparams_path",
    "load_hyperparams",
    "parse_overrides",
    "parse_schedule",
    "resolve",
]

#: Keys the trainer consumes itself (the rest go to the algorithm's constructor).
TRAINER_KEYS = ("n_envs", "n_timesteps", "policy", "normalize")
#: Zoo keys qflgym's trainer does not implement (use the zoo's trainer for these).
UNSUPPORTED_KEYS = ("env_wrapper", "vec_env_wrapper", "frame_stack", "callback")


class Hyperparams(dict):
    """A resolved hyperparameter mapping (plain values, schedule strings kept for saving)."""


def default_hyperparams_path(algo: str) -> Path:
    """The packaged ``configs/agents/<algo>.yml``."""
    return preset_path("agents", algo)


def load_hyperparams(path: str | Path, env_id: str) -> tuple[dict[str, Any], bool]:
    """Read the hyperparameters of ``env_id`` from a zoo-format YAML file.

    Args:
        path: The YAML file.
        env_id: The env id key.

    Returns:
        ``(hyperparams, found)``: the env's mapping (empty when the file has no entry for it, in which case
        ``found`` is false and SB3's defaults apply).

    Raises:
        FileNotFoundError: The file does not exist.
        ConfigError: The file is not a mapping of mappings.
    """
    data = load_yaml(path, what="hyperparameter")
    if env_id not in data:
        return {}, False
    entry = data[env_id] or {}
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: hyperparameters of {env_id} must be a mapping, got {type(entry).__name__}")
    return copy.deepcopy(entry), True


def _did_you_mean(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, [*allowed, *TRAINER_KEYS], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: Scientific notation without a decimal point (``1e-4``), which YAML 1.1 (PyYAML) reads as a string.
_EXPONENT_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` (or the zoo's ``key:value``) overrides; values are read as YAML.

    ``1e-4`` is read as the number (PyYAML would read it as the string ``"1e-4"``, which SB3 rejects).

    Raises:
        ConfigError: An item has neither ``=`` nor ``:``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        sep = "=" if "=" in item else ":" if ":" in item else None
        if sep is None:
            raise ConfigError(f"hyperparameter override {item!r} must look like key=value")
        key, value = item.split(sep, 1)
        parsed = yaml.safe_load(value)
        out[key.strip()] = float(parsed) if isinstance(parsed, str) and _EXPONENT_NUMBER.fullmatch(parsed) else parsed
    return out


def parse_schedule(value: Any) -> Any:
    """Turn a zoo schedule string into a schedule; return other values unchanged.

    ``lin_<x>`` is the zoo's linear schedule ``progress_remaining * x`` (from ``x`` at the start of training
    to 0 at the end); ``const_<x>`` is a constant. Numbers pass through.

    Raises:
        ConfigError: A ``lin_``/``const_`` string whose number does not parse.
    """
    if not isinstance(value, str):
        return value
    for prefix in ("lin_", "const_"):
        if value.startswith(prefix):
            try:
                number = float(value[len(prefix) :])
            except ValueError:
                raise ConfigError(f"bad schedule {value!r}: expected {prefix}<number>, e.g. lin_3e-4") from None
            from stable_baselines3.common.utils import ConstantSchedule, LinearSchedule

            return LinearSchedule(number, 0.0, 1.0) if prefix == "lin_" else ConstantSchedule(number)
    return value


def _eval_policy_kwargs(text: str) -> dict[str, Any]:
    """Evaluate a zoo ``policy_kwargs`` string like ``"dict(net_arch=[64, 64], activation_fn=nn.ReLU)"``."""
    import torch.nn as nn

    tree = ast.parse(text, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in ("dict", "nn", "True", "False", "None"):
            raise ConfigError(f"policy_kwargs may only use dict(...) and nn.<Module>, got name {node.id!r}")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ConfigError(f"policy_kwargs may not access private attribute {node.attr!r}")
    value = eval(compile(tree, "<policy_kwargs>", "eval"), {"__builtins__": {}, "dict": dict, "nn": nn})
    if not isinstance(value, dict):
        raise ConfigError(f"policy_kwargs must evaluate to a dict, got {type(value).__name__}")
    return value


def resolve(
    algo_class: type[Any],
    hyperparams: Mapping[str, Any],
    source: str = "hyperparameters",
    sources: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split and convert a zoo mapping into trainer settings and algorithm keyword arguments.

    Args:
        algo_class: The SB3 algorithm class (its constructor's signature validates the keys).
        hyperparams: The zoo mapping of one env id.
        source: Where the mapping came from (for error messages).
        sources: Where single keys came from instead (e.g. ``{"n_steps": "--set n_steps=64"}`` for overrides).

    Returns:
        ``(trainer, algo_kwargs)``: ``trainer`` holds the :data:`TRAINER_KEYS` present; ``algo_kwargs`` the
        constructor keyword arguments with schedules and ``policy_kwargs`` converted.

    Raises:
        ConfigError: An unknown or unsupported key (naming the allowed keys) or a malformed value.
    """
    params = inspect.signature(algo_class.__init__).parameters
    allowed = [p for p in params if p not in ("self", "env", "policy", "_init_setup_model")]
    trainer: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    for key, value in hyperparams.items():
        where = (sources or {}).get(key, source)
        if key in TRAINER_KEYS:
            trainer[key] = value
        elif key in UNSUPPORTED_KEYS:
            raise ConfigError(
                f"{where}: {key!r} is a zoo feature qflgym train does not implement; use rl_zoo3's trainer"
            )
        elif key not in allowed:
            raise ConfigError(
                f"{where}: unknown hyperparameter {key!r} for {algo_class.__name__}"
                f"{_did_you_mean(key, allowed)}; allowed: "
                f"{', '.join(sorted([*allowed, *TRAINER_KEYS]))}"
            )
        elif key == "policy_kwargs" and isinstance(value, str):
            kwargs[key] = _eval_policy_kwargs(value)
        else:
            kwargs[key] = parse_schedule(value)
    if "n_timesteps" in trainer:
        trainer["n_timesteps"] = int(float(trainer["n_timesteps"]))
    return trainer, kwargs
