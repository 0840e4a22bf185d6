"""Mutation check of the env's numbers: do the tests fail when the observation or reward code is broken?

Each mutant is one small change of the source (an operator flipped, a constant changed, a sign dropped,
an assignment removed, two values of a dict swapped, ...), made with :mod:`ast` on one function or module.
A mutant is *killed* when the fast test subset fails on it and *survives* otherwise; a surviving mutant is a
change of behaviour no test notices (or an equivalent mutant, listed in :data:`EQUIVALENT` with the reason).

The source files are never modified: a forked child (the third-party imports stay loaded in the parent)
drops every ``qflgym`` module, installs an import hook that compiles the mutated source in place of the
original file and runs the tests with ``pytest -x``. mutmut 3 was tried first; it does not run with this
layout (it copies the tree into ``mutants/`` but ``qflgym.envs`` resolves through the package-dir mapping
to the original files, so every mutant "survives").

Usage::

    python benchmarks/mutation.py                    # the env targets (target: 0 survivors), then the report
    python benchmarks/mutation.py --only envs        # the env targets only
    python benchmarks/mutation.py --jobs 2 --list    # list the mutants without running them
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.abc
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The fast test subset run on every mutant, the most discriminating first (``-x`` stops at the first failure).
ENV_TESTS: tuple[str, ...] = (
    "tests/test_envs_numbers.py",
    "tests/test_envs_pinned.py",
    "tests/test_envs_rewards.py",
    *(
        f"tests/test_envs.py::{name}"
        for name in (
            "test_observation_layout_names_every_feature",
            "test_label_fraction_features_are_each_clients_label_distribution",
            "test_dict_observation_holds_the_same_numbers",
            "test_selecting_no_client_is_a_valid_round",
            "test_availability_drawn_by_the_federation_reaches_observation_masks_and_dropouts",
            "test_the_configs_round_budget_is_the_episode_length_and_the_specs_max_episode_steps",
            "test_env_truncates_at_the_round_budget_without_time_limit",
            "test_target_accuracy_terminates_with_a_bonus",
            "test_stop_action_ends_the_episode_without_a_round",
            "test_render_ansi_table_and_rgb_array",
        )
    ),
    "tests/test_envs_state.py::test_get_state_set_state_gives_the_same_next_step",
)
CORE_TESTS: tuple[str, ...] = ("tests/test_envs_numbers.py", "tests/test_federation.py")

#: The env step's methods in ``envs/base.py`` (everything a step runs after the codec decoded the action).
STEP_METHODS: tuple[str, ...] = (
    "step",
    "begin_step",
    "end_step",
    "_rewards",
    "_reward",
    "_terminated",
    "_truncated",
    "_info",
    "objective_value",
    "_apply_report",
    "_read_availability",
    "_observation",
    "_client_features",
    "_global_features",
)
#: Words that mark a statement of qfl_core's cost accounting.
COST_WORDS: tuple[str, ...] = ("bytes", "shots", "wall_time", "executions", "latency", "server_time", "seconds")


@dataclass(frozen=True)
class Target:
    """Where to mutate: a module, optionally only some functions, optionally only cost statements."""

    group: str
    module: str
    path: str
    functions: tuple[str, ...] | None = None
    words: tuple[str, ...] | None = None
    tests: tuple[str, ...] = ENV_TESTS


TARGETS: tuple[Target, ...] = (
    Target("envs", "qflgym.envs.observation", "envs/observation.py"),
    Target("envs", "qflgym.envs.rewards", "envs/rewards.py"),
    Target("envs", "qflgym.envs.base", "envs/base.py", functions=STEP_METHODS),
    Target(
        "core-costs",
        "qflgym.qfl_core.federation",
        "qfl_core/federation.py",
        ("finish_round", "_client_reports"),
        COST_WORDS,
        CORE_TESTS,
    ),
    Target("core-costs", "qflgym.qfl_core.federation", "qfl_core/federation.py", ("param_bytes",), None, CORE_TESTS),
    Target("core-costs", "qflgym.qfl_core.clients", "qfl_core/clients.py", None, COST_WORDS, CORE_TESTS),
)

#: The eight deliberate breaks of the review (issue 14; 7 of them passed the suite then), as text patches:
#: ``(path, description, old, new)``. They run first, as the ``review`` group.
REVIEW_BREAKS: tuple[tuple[str, str, str, str], ...] = (
    (
        "envs/base.py",
        "cumulative_bytes and cumulative_wall_time swapped",
        '"cumulative_bytes": self._total_bytes / (budget * self._scales.bytes),\n'
        '            "cumulative_wall_time": self._total_time / (budget * self._scales.time),',
        '"cumulative_bytes": self._total_time / (budget * self._scales.time),\n'
        '            "cumulative_wall_time": self._total_bytes / (budget * self._scales.bytes),',
    ),
    (
        "envs/rewards.py",
        "the sign of loss_drop flipped",
        "(ctx.prev_val_loss - ctx.val_loss) / scale",
        "(ctx.val_loss - ctx.prev_val_loss) / scale",
    ),
    ("envs/base.py", "the sign of target_gap flipped", "self._target - self._val_acc", "self._val_acc - self._target"),
    ("envs/base.py", "update_cosine never written", "self._cosine[ids] = rows[:, 3]", "pass"),
    (
        "envs/rewards.py",
        "early_stop_penalty always 0",
        "return max(0.0, ctx.target_accuracy - ctx.val_accuracy)",
        "return 0.0",
    ),
    (
        "envs/rewards.py",
        "shot_cost on the wrong scale",
        "ctx.report.shots_used / ctx.shots_scale",
        "ctx.report.shots_used / ctx.time_scale",
    ),
    ("envs/observation.py", "noise_level without its readout term", " * (1.0 - 2.0 * readout)", ""),
    (
        "envs/rewards.py",
        "accuracy_gain broken",
        "return ctx.val_accuracy - ctx.prev_val_accuracy",
        "return ctx.val_accuracy",
    ),
)
_MODULES = {t.path: t.module for t in TARGETS}


def review_mutants() -> list[Mutant]:
    """The review's breaks as mutants of the ``review`` group."""
    return [
        Mutant(Target("review", _MODULES[path], path), -1, 0, description, old.strip(), (old, new))
        for path, description, old, new in REVIEW_BREAKS
    ]


#: ``(path, stripped source line, description) -> why the mutant cannot change behaviour``.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("envs/rewards.py", "RewardTerm = Callable[[RewardContext], float]", "drop the statement"): (
        "a type alias: with postponed annotations only type checkers read it"
    ),
}


@dataclass(frozen=True)
class Mutant:
    """One change: the ``index``-th mutation site of ``target`` (in ast.walk order)."""

    target: Target
    index: int
    line: int
    description: str
    code: str
    """The source line, stripped (with ``description``, the key of :data:`EQUIVALENT`)."""
    patch: tuple[str, str] | None = None
    """``(old, new)``: a text patch instead of the ``index``-th ast mutation (the review's breaks)."""

    @property
    def equivalent(self) -> str | None:
        """Why this mutant cannot change behaviour, if it is listed in :data:`EQUIVALENT`."""
        return EQUIVALENT.get((self.target.path, self.code, self.description))


# ------------------------------------------------------------------------------------------------ mutation
_BINOPS: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Pow: ast.Mult,
    ast.Mod: ast.FloorDiv,
}
_CMPOPS: dict[type, type] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}


def _sites(node: ast.AST) -> Iterator[tuple[int, str, Callable[[], None]]]:
    """The mutations of one node: ``(line, description, apply)`` (``apply`` changes the tree in place)."""
    line = getattr(node, "lineno", 0)
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BINOPS:
        new = _BINOPS[type(node.op)]
        yield line, f"{type(node.op).__name__} -> {new.__name__}", lambda: setattr(node, "op", new())
    elif isinstance(node, ast.Compare):
        for k, op in enumerate(node.ops):
            if type(op) in _CMPOPS:
                new = _CMPOPS[type(op)]
                yield (
                    line,
                    f"{type(op).__name__} -> {new.__name__}",
                    lambda k=k, new=new: node.ops.__setitem__(k, new()),
                )
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield line, f"{type(node.op).__name__} -> {new.__name__}", lambda: setattr(node, "op", new())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        yield line, f"drop {type(node.op).__name__}", lambda: _replace(node, node.operand)
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield line, f"{node.value} -> {not node.value}", lambda: setattr(node, "value", not node.value)
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value + 1 if isinstance(node.value, int) else (node.value * 2 if node.value else 1.0)
        yield line, f"{node.value!r} -> {value!r}", lambda: setattr(node, "value", value)
    elif isinstance(node, ast.IfExp):
        yield line, "swap if/else", lambda: _swap_branches(node)
    elif isinstance(node, ast.Dict):
        for k in range(len(node.values) - 1):
            if ast.dump(node.values[k]) == ast.dump(node.values[k + 1]):
                continue  # swapping equal values changes nothing
            a, b = _key(node.keys[k]), _key(node.keys[k + 1])
            yield line, f"swap values of {a} and {b}", lambda k=k: _swap(node.values, k)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("max", "min"):
        name = "min" if node.func.id == "max" else "max"
        yield line, f"{node.func.id} -> {name}", lambda: setattr(node.func, "id", name)
    elif isinstance(node, ast.Attribute) and node.attr in ("maximum", "minimum"):
        attr = "minimum" if node.attr == "maximum" else "maximum"
        yield line, f"np.{node.attr} -> np.{attr}", lambda: setattr(node, "attr", attr)
    for field in ("body", "orelse"):
        block = getattr(node, field, None)
        if not isinstance(block, list):
            continue
        for k, stmt in enumerate(block):
            if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)) and not _is_docstring(stmt):
                if isinstance(stmt, ast.Assign) and ast.unparse(stmt.targets[0]) == "__all__":
                    continue  # only ``from module import *`` reads it
                yield stmt.lineno, "drop the statement", lambda block=block, k=k: block.__setitem__(k, ast.Pass())


def _swap_branches(node: ast.IfExp) -> None:
    node.body, node.orelse = node.orelse, node.body


def _replace(node: ast.AST, new: ast.AST) -> None:
    """Make ``node`` become ``new`` (in place, keeping its position in the tree)."""
    node.__class__ = new.__class__
    node.__dict__.clear()
    node.__dict__.update(copy.deepcopy(new).__dict__)


def _swap(values: list[ast.expr], k: int) -> None:
    values[k], values[k + 1] = values[k + 1], values[k]


def _key(node: ast.expr | None) -> str:
    return "**" if node is None else ast.unparse(node)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _scopes(tree: ast.Module, target: Target) -> list[ast.AST]:
    """The nodes to mutate: the whole module, or the named functions (methods included).

    Raises:
        ValueError: If a named function is not in the module (a renamed one would silently go unmutated).
    """
    if target.functions is None:
        return [tree]
    scopes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name in target.functions]
    missing = sorted(set(target.functions) - {n.name for n in scopes})
    if missing:
        raise ValueError(f"{target.path}: no function named {', '.join(missing)}; update the mutation targets")
    return scopes


def _walk(tree: ast.Module, target: Target, lines: list[str]) -> Iterator[tuple[int, str, Callable[[], None]]]:
    """Every mutation site of ``target`` in ``tree``, in a stable order (docstrings and annotations skipped)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        for annotation in (getattr(node, "returns", None), getattr(node, "annotation", None)):
            if isinstance(annotation, ast.AST):
                skip.update(id(n) for n in ast.walk(annotation))
        if isinstance(node, ast.stmt) and _is_docstring(node):
            skip.add(id(node.value))
        if isinstance(node, ast.ClassDef) and node.name == "RewardContext":
            skip.update(id(n) for n in ast.walk(node))  # the fields' defaults: a plain record
    for scope in _scopes(tree, target):
        for node in ast.walk(scope):
            if id(node) in skip:
                continue
            for line, description, apply in _sites(node):
                if target.words is None or any(w in lines[line - 1] for w in target.words):
                    yield line, description, apply


def mutants(target: Target) -> list[Mutant]:
    """Every mutant of ``target``."""
    lines = (ROOT / target.path).read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    return [
        Mutant(target, index, line, description, lines[line - 1].strip())
        for index, (line, description, _) in enumerate(_walk(tree, target, lines))
    ]


def mutated_source(mutant: Mutant) -> str:
    """The module source with ``mutant`` applied."""
    if mutant.patch is not None:
        source = (ROOT / mutant.target.path).read_text()
        old, new = mutant.patch
        if source.count(old) != 1:
            raise ValueError(f"{mutant.target.path}: the patch {mutant.description!r} no longer applies")
        return source.replace(old, new)
    lines = (ROOT / mutant.target.path).read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    for index, (_, _, apply) in enumerate(_walk(tree, mutant.target, lines)):
        if index == mutant.index:
            apply()
            break
    return ast.unparse(ast.fix_missing_locations(tree))


# --------------------------------------------------------------------------------------------------- running
class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``module`` from ``source`` (its ``__file__`` stays the original path)."""

    def __init__(self, module: str, source: str, path: Path) -> None:
        self.module, self.source, self.path = module, source, path

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=str(self.path))

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.__file__ = str(self.path)
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)


def _run_child(mutant: Mutant | None) -> int:
    """In a forked child: import the mutant instead of the original module and run the tests (exit code)."""
    import pytest

    ours = ("qflgym.envs", "qflgym.agents", "tests", "test_", "conftest")
    if mutant is not None and not mutant.target.module.startswith("qflgym.envs"):
        ours = ("qflgym", *ours)  # a qfl_core target: every module of ours is imported afresh
    for name in [m for m in sys.modules if m.startswith(ours)]:
        del sys.modules[name]
    if mutant is not None:
        finder = _MutantFinder(mutant.target.module, mutated_source(mutant), ROOT / mutant.target.path)
        sys.meta_path.insert(0, finder)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    tests = mutant.target.tests if mutant is not None else tuple(dict.fromkeys(ENV_TESTS + CORE_TESTS))
    excluded = set(filter(None, os.environ.get("QFLGYM_MUTATION_EXCLUDE", "").split(os.pathsep)))
    tests = tuple(t for t in tests if t.split("::")[0] not in excluded)
    args = ["-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]
    return int(pytest.main(args))


def _spawn(mutant: Mutant | None) -> int:
    """Fork a child that runs the tests on ``mutant`` (``None``: on the original code); its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _run_child(mutant)
        finally:
            os._exit(code)
    return pid


def _outcome(pid: int, began: float, timeout_s: float) -> str | None:
    """``killed`` / ``survived`` / ``killed (timeout)`` once the child ended (``None`` while it runs)."""
    done, status = os.waitpid(pid, os.WNOHANG)
    if not done:
        if time.monotonic() - began <= timeout_s:
            return None
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return "killed (timeout)"
    return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"


def run(targets: list[Target], jobs: int, timeout_s: float) -> dict[str, list[tuple[Mutant, str]]]:
    """Run every mutant of ``targets``; ``{group: [(mutant, outcome)]}`` with outcome killed/survived/timeout."""
    queue = [m for t in targets for m in (review_mutants() if t.group == "review" else mutants(t))]
    results: dict[str, list[tuple[Mutant, str]]] = {t.group: [] for t in targets}
    running: dict[int, tuple[Mutant, float]] = {}
    start = time.monotonic()
    while queue or running:
        while queue and len(running) < jobs:
            mutant = queue.pop(0)
            running[_spawn(mutant)] = (mutant, time.monotonic())
        for pid, (mutant, began) in list(running.items()):
            outcome = _outcome(pid, began, timeout_s)
            if outcome is None:
                continue
            del running[pid]
            results[mutant.target.group].append((mutant, outcome))
            if outcome == "survived":
                tag = f"equivalent ({mutant.equivalent})" if mutant.equivalent else "SURVIVED"
                print(
                    f"  {tag}: {mutant.target.path}:{mutant.line}  {mutant.description}  |  {mutant.code}", flush=True
                )
        time.sleep(0.02)
    print(f"ran {sum(len(r) for r in results.values())} mutants in {time.monotonic() - start:.0f} s")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["review", *sorted({t.group for t in TARGETS})], default=None)
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per mutant before it counts as killed")
    parser.add_argument("--path", default=None, help="only the target with this path (e.g. envs/rewards.py)")
    parser.add_argument("--exclude", nargs="*", default=[], help="test files left out of the subsets (a 'before')")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    review = Target("review", "", "")
    targets = [t for t in (review, *TARGETS) if args.only in (None, t.group) and args.path in (None, t.path)]
    if args.list:
        for t in targets:
            for m in review_mutants() if t.group == "review" else mutants(t):
                print(f"{t.group:10s} {m.target.path}:{m.line}  {m.description}  |  {m.code}")
        return 0
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    os.environ["QFLGYM_MUTATION_EXCLUDE"] = os.pathsep.join(args.exclude)
    import pytest
    import torch

    torch.set_num_threads(1)
    # Load every third-party dependency (and pytest's machinery) once, before forking.
    files = dict.fromkeys(t.split("::")[0] for t in ENV_TESTS + CORE_TESTS)
    pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", *files])
    elsewhere = [m for m in ("qflgym.envs", "qflgym.qfl_core") if ROOT not in Path(sys.modules[m].__file__).parents]
    if elsewhere:
        print(f"{', '.join(elsewhere)} imported from outside {ROOT}: run this checkout's python (its .venv)")
        return 2

    began, pid = time.monotonic(), _spawn(None)
    while (outcome := _outcome(pid, began, 4 * args.timeout)) is None:
        time.sleep(0.1)
    if outcome != "survived":
        print("the unmutated tests fail; fix them first")
        return 2
    results = run(targets, args.jobs, args.timeout)
    failed = False
    for group, rows in results.items():
        survived = [m for m, outcome in rows if outcome == "survived"]
        real = [m for m in survived if not m.equivalent]
        print(
            f"{group}: {len(rows)} mutants, {len(rows) - len(survived)} killed, {len(survived)} survived "
            f"({len(survived) - len(real)} listed as equivalent)"
        )
        failed = failed or (group in ("review", "envs") and bool(real))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
