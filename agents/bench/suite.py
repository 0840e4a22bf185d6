"""Benchmark suites: the YAML schema (:class:`BenchSuite`) and :func:`load_suite`.

A suite is a YAML file (``configs/bench/*.yaml``) validated into a :class:`BenchSuite`::

    name: client-selection
    seeds: [1000, 1001, 1002, 1003, 1004]     # evaluation seeds (never used for training)
    envs:
      - id: QFL/ClientSelection-v0
      - {id: QFL/ClientSelection-Hard-v0, label: hard}
    controllers:
      - {name: random-k}                        # a registered controller, default arguments
      - {name: poc, controller: power-of-choice, kwargs: {d: 6}}
      - {name: ppo, controller: sb3, kwargs: {path: runs/ppo/...}, envs: [QFL/ClientSelection-v0]}
    executor: {kind: ray}                       # or serial
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from qflgym.config import ConfigError, StrictModel, build_config, load_yaml

__all__ = ["BenchSuite", "ControllerEntry", "EnvEntry", "ExecutorConfig", "load_suite"]


class ControllerEntry(StrictModel):
    """One controller of a suite."""

    name: str
    """Label in tables and plots (also the registry name when ``controller`` is omitted)."""
    controller: str | None = None
    """Registered controller name (``random-k``, ``oort``, ``sb3``, ``composite``, ...); default ``name``."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the controller."""
    envs: list[str] | None = None
    """Only run on these envs (labels or ids); default every env of the suite."""
    deterministic: bool = True
    """Passed to ``predict`` (matters for trained policies)."""

    @property
    def registry_name(self) -> str:
        """The registered controller name."""
        return self.controller or self.name

    @model_validator(mode="after")
    def _known(self) -> ControllerEntry:
        from qflgym.agents.controllers import controller_names

        names = controller_names()
        if self.registry_name not in names:
            raise ValueError(f"unknown controller {self.registry_name!r}; allowed: {', '.join(names)}")
        if self.registry_name == "sb3":
            from qflgym.agents.controllers.sb3 import find_model

            path = self.kwargs.get("path")
            if not path:
                raise ValueError(f"controller {self.name!r} (sb3) needs kwargs.path: a model .zip or run directory")
            try:
                find_model(path)
            except FileNotFoundError as err:
                raise ValueError(f"controller {self.name!r}: {err} (train it first with `qflgym train`)") from None
        return self


class EnvEntry(StrictModel):
    """One env preset of a suite."""

    id: str
    """Registered env id, e.g. ``QFL/ClientSelection-v0``."""
    label: str | None = None
    """Label in tables and plots; default the id."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the env's default config."""
    target: float | None = Field(None, gt=0.0, le=1.0)
    """Validation accuracy for the ``*_to_target`` metrics; default the env's ``target_accuracy``."""

    @property
    def name(self) -> str:
        """The label (or the id)."""
        return self.label or self.id

    @field_validator("id")
    @classmethod
    def _registered(cls, value: str) -> str:
        from qflgym.agents.runtime import check_env_id

        check_env_id(value)
        return value


class ExecutorConfig(StrictModel):
    """Where tasks run."""

    kind: Literal["ray", "serial"] = "ray"
    """``ray`` (local instance, or the cluster at ``RAY_ADDRESS``) or ``serial`` (this process)."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of the local Ray instance; default all of this machine's."""
    torch_threads: int = Field(1, ge=1)
    """Torch and BLAS threads inside each task (one task per CPU)."""


class BenchSuite(StrictModel):
    """A benchmark: controllers × envs × seeds."""

    name: str
    """Suite name (written into every row)."""
    description: str = ""
    """Free text for the report."""
    seeds: list[int] = Field(min_length=1)
    """``reset`` seeds of the evaluation episodes (keep them disjoint from training seeds)."""
    episodes_per_seed: int = Field(1, ge=1)
    """Episodes per seed (the first reset is seeded, later ones continue the env's generator)."""
    envs: list[EnvEntry] = Field(min_length=1)
    """The env presets."""
    controllers: list[ControllerEntry] = Field(min_length=1)
    """The controllers."""
    executor: ExecutorConfig = ExecutorConfig()
    """Where tasks run."""
    baseline: str | None = "random-k"
    """Controller label against which the paired rounds-to-target reduction is reported (skipped when the
    suite has no controller of that label)."""

    @model_validator(mode="after")
    def _unique(self) -> BenchSuite:
        for what, names in (
            ("controller", [c.name for c in self.controllers]),
            ("env", [e.name for e in self.envs]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} labels must be unique; repeated: {', '.join(dupes)}")
        env_names = {e.name for e in self.envs} | {e.id for e in self.envs}
        for c in self.controllers:
            missing = sorted(set(c.envs or []) - env_names)
            if missing:
                raise ValueError(
                    f"controller {c.name!r} restricts to unknown env(s) {', '.join(missing)}; allowed: "
                    f"{', '.join(sorted(env_names))}"
                )
        return self


def load_suite(
    path: str | Path, overrides: dict[str, Any] | None = None, envs: Sequence[str] | None = None
) -> BenchSuite:
    """Load and validate a suite YAML (relative ``sb3`` model paths resolve against the current directory).

    Args:
        path: The suite file.
        overrides: Top-level fields replacing the file's (e.g. ``{"seeds": [...]}``).
        envs: Keep only these envs (labels or ids) and the controllers that run on at least one of them; a
            controller's ``envs`` restriction is narrowed to the kept ones. Applied before validation, so the
            models of dropped controllers need not exist.

    Raises:
        FileNotFoundError: The file does not exist.
        ConfigError: Naming every bad field.
        ConfigError: ``envs`` names an env the suite does not have.
    """
    data = load_yaml(path)
    data.update(overrides or {})
    if envs is not None:
        data = _select_envs(data, envs, path)
    return build_config(BenchSuite, data, f"bench suite {path}")


def _select_envs(data: dict[str, Any], envs: Sequence[str], path: str | Path) -> dict[str, Any]:
    wanted = set(envs)
    entries = [e if isinstance(e, dict) else {"id": e} for e in data.get("envs") or []]
    kept = [e for e in entries if wanted & {e.get("id"), e.get("label")}]
    known = {n for e in entries for n in (e.get("id"), e.get("label")) if n}
    unknown = sorted(wanted - known)
    if unknown:
        raise ConfigError(f"bench suite {path} has no env {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    names = {n for e in kept for n in (e.get("id"), e.get("label")) if n}
    controllers = []
    for c in data.get("controllers") or []:
        if isinstance(c, dict) and c.get("envs") is not None:
            narrowed = [n for n in c["envs"] if n in names]
            if not narrowed:
                continue
            c = {**c, "envs": narrowed}
        controllers.append(c)
    return {**data, "envs": kept, "controllers": controllers}
