"""The layer order: root tools (qflgym/*.py) <- qfl_core <- envs <- agents, and qfl_core never imports gymnasium.

Every ``.py`` file of the four layers is parsed (not imported) and each of its imports, lazy ones and those under
``TYPE_CHECKING`` included, is resolved to a module name; a module may import only modules of its own layer or of
layers below it. Module paths given as string literals to calls (``registered_name("qflgym.envs.rules:...")``,
``importlib.import_module("...")``) count as imports too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Source folder -> installed package name, lowest layer first.
FOLDERS = {"qflgym": "qflgym", "qfl_core": "qflgym.qfl_core", "envs": "qflgym.envs", "agents": "qflgym.agents"}
#: Layer of each ``qflgym.<name>`` subpackage; every other ``qflgym`` module is a root tool (layer 0).
LAYERS = {"qfl_core": 1, "envs": 2, "agents": 3}
LAYER_NAMES = ("root tools", "qfl_core", "envs", "agents")
#: Top-level packages a layer must never import (the simulator stays free of Gymnasium).
FORBIDDEN = {0: ("gymnasium", "gym"), 1: ("gymnasium", "gym")}


def module_name(path: Path) -> str:
    """The installed module name of a source file, e.g. ``envs/base.py`` -> ``qflgym.envs.base``."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int | None:
    """The layer of a module in the ``qflgym`` namespace, or None for a module outside it."""
    parts = module.split(".")
    if parts[0] != "qflgym":
        return None
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def imported_modules(module: str, source: str, *, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``source``, relative ones resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node.lineno, f"{base}.{a.name}" if not node.module else base) for a in node.names]
        elif isinstance(node, ast.Call):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("qflgym."):
                    found.append((node.lineno, arg.value.split(":")[0]))
    return found


def violations(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """Every import of ``module`` that breaks the layer order, as ``line: message`` strings."""
    own = layer(module)
    assert own is not None, module
    problems = []
    for line, target in imported_modules(module, source, is_package=is_package):
        top = target.split(".")[0]
        if top in FORBIDDEN.get(own, ()):
            problems.append(f"{line}: {LAYER_NAMES[own]} must not import {target}")
        theirs = layer(target)
        if theirs is not None and theirs > own:
            problems.append(f"{line}: {LAYER_NAMES[own]} imports {target} from the higher layer {LAYER_NAMES[theirs]}")
    return problems


SOURCES = sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_every_layer_has_sources():
    assert {p.relative_to(ROOT).parts[0] for p in SOURCES} == set(FOLDERS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layer_order(path: Path):
    problems = violations(module_name(path), path.read_text(), is_package=path.name == "__init__.py")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "is_package", "expected"),
    [
        ("qflgym.qfl_core.federation", "import gymnasium as gym", False, "qfl_core must not import gymnasium"),
        ("qflgym.qfl_core.data", "def f():\n    from gymnasium import spaces", False, "must not import gymnasium"),
        ("qflgym.qfl_core.data", "from qflgym.envs import QFLEnv", False, "higher layer envs"),
        ("qflgym.qfl_core.data", "from ..envs.config import EnvConfig", False, "higher layer envs"),
        ("qflgym.qfl_core", "from ..agents import cli", True, "higher layer agents"),
        ("qflgym.envs.rules", "from .. import agents", False, "higher layer agents"),
        ("qflgym.envs.base", "x = registered_name('qflgym.agents.controllers:CONTROLLERS')", False, "higher layer"),
        ("qflgym.config", "from qflgym.qfl_core.config import FederationConfig", False, "root tools imports"),
        ("qflgym.registry", "from .qfl_core import Federation", False, "higher layer qfl_core"),
    ],
)
def test_checker_catches_a_bad_import(module: str, source: str, is_package: bool, expected: str):
    problems = violations(module, source, is_package=is_package)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("qflgym.agents.cli", "import gymnasium\nfrom qflgym.envs import QFLEnv\nfrom qflgym.config import load_yaml"),
        ("qflgym.envs.base", "from .config import EnvConfig\nfrom ..qfl_core import Federation\nimport numpy"),
        ("qflgym.qfl_core.data", "from .config import DataConfig\nfrom qflgym.registry import Registry"),
        ("qflgym.config", "import importlib\nfrom .registry import Registry"),
    ],
)
def test_checker_accepts_imports_down_the_layers(module: str, source: str):
    assert violations(module, source) == []


def test_root_package_and_tools_import_light():
    code = (
        "import sys, qflgym, qflgym.registry, qflgym.config; "
        "print(sorted(m for m in ('numpy', 'torch', 'gymnasium', 'pennylane', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
