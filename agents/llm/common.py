"""Helpers shared by the LLM trainers and CLI: config dataclasses as CLIs, run directories, teacher rollouts.

* :func:`add_dataclass_arguments` / :func:`dataclass_from_args` — a config dataclass whose fields carry
  ``metadata={"help": ...}`` doubles as the command line (CleanRL/TRL style); ``--config FILE.yaml`` supplies
  defaults that explicit flags override.
* :func:`prepare_run_dir` — ``<out>/<kind>/<env>__<model>__s<seed>__<time>/`` with ``config.yaml`` (the
  resolved config), ``command.txt`` and ``versions.json``.
* :func:`rollout` — run a controller (a teacher) on an env and record ``(prompt, completion)`` pairs and,
  optionally, the env state before each decision (for GRPO's reward).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

__all__ = [
    "Rollout",
    "add_dataclass_arguments",
    "compact_lm_head",
    "config_command",
    "dataclass_from_args",
    "make_env",
    "make_teacher",
    "prepare_run_dir",
    "rollout",
    "seconds_per_step",
    "step_timer",
    "teacher_options",
]


# ------------------------------------------------------------------------------------------- dataclass CLI


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
    from qflgym.config import load_yaml

    values: dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        path = Path(config_file)
        loaded = load_yaml(path, "config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)} in {path}; allowed: {', '.join(sorted(names))}")
        values.update(loaded)
    for f in dataclasses.fields(cls):
        if f.name in vars(args):
            values[f.name] = getattr(args, f.name)
    return cls(**values)


# ---------------------------------------------------------------------------------------------- run dirs


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("qflgym", "torch", "transformers", "peft", "trl", "gymnasium", "stable-baselines3"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _yaml_safe(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _yaml_safe(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


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
    """Create the run directory and write ``config.yaml``, ``command.txt`` and ``versions.json``.

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
    run_dir = Path(out) / kind / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_yaml_safe(config), sort_keys=False))
    invoked = shlex.join(list(sys.argv if argv is None else argv))
    (run_dir / "command.txt").write_text(
        f"{invoked}\n# equivalent, every setting explicit:\n{config_command(kind, config)}\n"
    )
    (run_dir / "versions.json").write_text(json.dumps(_versions(), indent=2))
    return run_dir


# ------------------------------------------------------------------------------------------------ rollouts


def make_env(env_id: str, env_config: dict[str, Any] | None = None) -> Any:
    """``gym.make`` a qflgym env (the agents package's helper)."""
    from qflgym.agents.sb3_training import make_env as _make_env

    return _make_env(env_id, env_config or None)


def make_teacher(teacher: str, env: Any, seed: int = 0, kwargs: dict[str, Any] | None = None) -> Any:
    """A controller by registry name, or a trained SB3 model from a path (``.zip`` or run directory).

    Also accepts a saved LLM policy directory (``qflgym_llm.json`` inside).
    """
    from qflgym.agents.controllers import make_controller

    kwargs = dict(kwargs or {})
    path = Path(teacher)
    if path.is_dir() and (path / "qflgym_llm.json").is_file():
        return make_controller("llm", env, seed=seed, path=str(path), **kwargs)
    if teacher.endswith(".zip") or path.exists():
        return make_controller("sb3", env, seed=seed, path=str(path), **kwargs)
    return make_controller(teacher, env, seed=seed, **kwargs)


def teacher_options(meta: dict[str, Any], teacher: str) -> tuple[dict[str, Any], bool]:
    """Controller kwargs and ``deterministic`` for evaluating ``teacher`` next to a saved policy.

    When ``teacher`` is the one the policy was distilled from (its ``qflgym_llm.json`` metadata ``meta``), it acts
    as it did then (e.g. an SB3 teacher sampled its actions); any other teacher gets no kwargs and acts
    deterministically.
    """
    if teacher != meta.get("teacher"):
        return {}, True
    return dict(meta.get("teacher_kwargs") or {}), bool(meta.get("teacher_deterministic", True))


@dataclass
class Rollout:
    """Records of a teacher rollout.

    Attributes:
        records: One dict per decision: ``prompt``, ``completion``, ``episode``, ``step``, ``reward``.
        states: Env snapshots (``env.unwrapped.get_state()``) before each decision, when requested.
        observations: The observation before each decision, when states are requested.
        returns: Return of every episode.
        rounds: Rounds of every episode.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    states: list[Any] = field(default_factory=list)
    observations: list[np.ndarray] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)


def rollout(
    env: Any,
    controller: Any,
    codec: Any,
    episodes: int,
    seed: int,
    *,
    keep_states: bool = False,
    deterministic: bool = True,
    progress: bool = False,
    description: str = "rollout",
) -> Rollout:
    """Run ``controller`` for ``episodes`` episodes (reset seeds ``seed, seed + 1, ...``) and record them.

    Args:
        env: A qflgym env.
        controller: Anything with ``predict``.
        codec: The env's :class:`~qflgym.agents.llm.codec.TextCodec` (prompt and canonical completion).
        episodes: Episodes to run.
        seed: Reset seed of the first episode.
        keep_states: Store ``env.unwrapped.get_state()`` before every decision.
        deterministic: Passed to ``predict``.
        progress: Show a progress bar.
        description: Progress bar label.
    """
    from tqdm.auto import tqdm

    out = Rollout()
    unwrapped = env.unwrapped
    bar = tqdm(total=episodes, desc=description, unit="ep", disable=not progress, dynamic_ncols=True)
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        start = np.ones(1, dtype=bool)
        total, step = 0.0, 0
        while True:
            if keep_states:
                out.states.append(unwrapped.get_state())
                out.observations.append(np.array(obs, copy=True))
            action, _ = controller.predict(obs, state=None, episode_start=start, deterministic=deterministic)
            start = np.zeros(1, dtype=bool)
            record = {
                "prompt": codec.prompt(obs),
                "completion": codec.render_action(action),
                "episode": ep,
                "step": step,
            }
            obs, reward, terminated, truncated, _ = env.step(action)
            record["reward"] = float(reward)
            out.records.append(record)
            total += float(reward)
            step += 1
            if terminated or truncated:
                break
        out.returns.append(total)
        out.rounds.append(step)
        bar.update(1)
        bar.set_postfix(ret=f"{np.mean(out.returns):.3f}")
    bar.close()
    return out


@contextlib.contextmanager
def compact_lm_head() -> Any:
    """Make TRL's fused LM head score only the labelled (completion) positions on CPU too.

    TRL 1.x projects hidden states through the LM head in tiles and, on CUDA/XPU, only at positions with a label;
    elsewhere it scores *every* position so that tile shapes stay static for compilers (Neuron). Eager CPU has no
    such constraint, and for Gemma-3 (a 262k-token head) scoring a 300-token prompt whose completion is 5 tokens
    wastes most of a training step. The switch is TRL's private ``_use_triton`` lookup in ``trl.trainer.utils``
    (only the compact/full decision reads it there; the kernels keep their own CPU path). A no-op if TRL changes.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


def step_timer() -> Any:
    """A ``transformers.TrainerCallback`` recording the wall time of every optimizer step (``.times``)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def seconds_per_step(step_times: Sequence[float]) -> float:
    """Typical seconds per optimizer step: the median, leaving out the first step (warm-up) when there are more."""
    times = list(step_times[1:] if len(step_times) > 2 else step_times)
    return float(np.median(times)) if times else float("nan")
