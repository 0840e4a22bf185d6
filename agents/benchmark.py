"""The benchmark harness behind ``qflgym bench``: controllers × env presets × seeds, run on Ray.

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

Every (controller, env, seed) is one task; a task builds its env and controller, runs
``episodes_per_seed`` episodes (the first reset with the seed) and returns one row per episode plus the
per-round curves. Tasks run as Ray remote functions -- a local Ray instance with ``num_cpus`` CPUs by default,
the cluster at ``RAY_ADDRESS`` when that is set -- or in this process with ``executor: serial``.

:func:`run_suite` writes to the output directory::

    results.csv    one row per episode (columns: RESULT_COLUMNS, then controller-specific extras)
    curves.csv     one row per round of every episode (accuracy, cumulative bytes, wall time, shots, reward)
    results.md     mean ± 95% CI per controller and env
    plots/         <env>__accuracy_vs_round.png, <env>__accuracy_vs_bytes.png
    suite.yaml     the resolved suite          command.txt   the command line
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, field_validator, model_validator

from qflgym.config import ConfigError, StrictModel, build_config, load_yaml

__all__ = [
    "RESULT_COLUMNS",
    "SUMMARY_METRICS",
    "BenchSuite",
    "ControllerEntry",
    "EnvEntry",
    "ExecutorConfig",
    "Task",
    "load_suite",
    "run_suite",
    "run_task",
    "summarize",
    "write_markdown",
    "write_results",
]

#: The columns every ``results.csv`` starts with.
RESULT_COLUMNS: tuple[str, ...] = (
    "suite",
    "controller",
    "env",
    "env_id",
    "seed",
    "episode",
    "return",
    "rounds",
    "budget",
    "terminated",
    "truncated",
    "final_accuracy",
    "best_accuracy",
    "final_val_accuracy",
    "target",
    "reached",
    "rounds_to_target",
    "bytes_to_target",
    "wall_time_to_target",
    "shots_to_target",
    "total_bytes_uploaded",
    "total_wall_time_s",
    "total_shots",
    "runtime_s",
)

#: ``(column, header, format)`` of the summary table.
SUMMARY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("return", "return", "{:.3f}"),
    ("final_accuracy", "final acc", "{:.3f}"),
    ("best_accuracy", "best acc", "{:.3f}"),
    ("rounds_to_target_censored", "rounds→target†", "{:.1f}"),
    ("rounds_to_target", "rounds→target", "{:.1f}"),
    ("bytes_to_target", "MB→target", "{:.3f}"),
    ("wall_time_to_target", "sim s→target", "{:.2f}"),
    ("shots_to_target", "shots→target", "{:.3g}"),
)


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
            from qflgym.agents.sb3_controller import find_model

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
        from qflgym.agents.sb3_training import check_env_id

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
        ValueError: ``envs`` names an env the suite does not have.
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
        raise ValueError(f"bench suite {path} has no env {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
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


@dataclass(frozen=True)
class Task:
    """One (controller, env, seed) of a suite: everything a worker needs, picklable."""

    suite: str
    controller: ControllerEntry
    env: EnvEntry
    seed: int
    episodes: int
    torch_threads: int = 1


@dataclass
class TaskResult:
    """Rows of one task: one per episode, and the per-round curves."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)


def tasks_of(suite: BenchSuite) -> list[Task]:
    """Every task of ``suite``, controller-major."""
    tasks = []
    for c in suite.controllers:
        for e in suite.envs:
            if c.envs is not None and e.name not in c.envs and e.id not in c.envs:
                continue
            for seed in suite.seeds:
                tasks.append(Task(suite.name, c, e, seed, suite.episodes_per_seed, suite.executor.torch_threads))
    return tasks


def run_task(task: Task) -> TaskResult:
    """Run one task in this process (what a Ray worker executes), with ``torch_threads`` torch/BLAS threads."""
    from qflgym.agents.runtime import limited_threads

    with limited_threads(task.torch_threads):
        return _run_task(task)


def _run_task(task: Task) -> TaskResult:
    from qflgym.agents.controllers import make_controller
    from qflgym.agents.evaluation import env_target, episode_metrics, run_episode
    from qflgym.agents.sb3_training import make_env

    env = make_env(task.env.id, task.env.config)
    try:
        controller = make_controller(task.controller.registry_name, env, seed=task.seed, **task.controller.kwargs)
        target = task.env.target if task.env.target is not None else env_target(env)
        result = TaskResult()
        base = {
            "suite": task.suite,
            "controller": task.controller.name,
            "env": task.env.name,
            "env_id": task.env.id,
            "seed": task.seed,
        }
        spec = getattr(env, "spec", None)
        budget = getattr(spec, "max_episode_steps", None)
        base["budget"] = float("nan") if budget is None else int(budget)
        for episode_index in range(task.episodes):
            ep = run_episode(
                env,
                controller,
                seed=task.seed if episode_index == 0 else None,
                deterministic=task.controller.deterministic,
            )
            result.rows.append({**base, "episode": episode_index, **episode_metrics(ep, target)})
            for rec in ep.trace:
                result.curves.append({**base, "episode": episode_index, **rec})
        return result
    finally:
        env.close()


# ----------------------------------------------------------------------------------------------- executors
def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="bench", unit="task", disable=not enabled, dynamic_ncols=True)


def run_serial(tasks: Sequence[Task], progress: bool = True) -> list[TaskResult]:
    """Run tasks one after another in this process."""
    results = []
    with _progress(len(tasks), progress) as bar:
        for task in tasks:
            bar.set_postfix_str(f"{task.controller.name} · {task.env.name} · seed {task.seed}")
            results.append(run_task(task))
            bar.update()
    return results


def run_ray(tasks: Sequence[Task], num_cpus: int | None = None, progress: bool = True) -> list[TaskResult]:
    """Run tasks as Ray remote functions, in submission order of the results.

    Starts a local Ray instance (``num_cpus`` CPUs, no dashboard) unless one is running in this process or
    ``RAY_ADDRESS`` names a cluster to join; a local instance started here is shut down afterwards.
    """
    import ray

    started = False
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        refs = [remote.remote(task) for task in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[TaskResult | None] = [None] * len(refs)
        pending = list(refs)
        with _progress(len(refs), progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[index[ref]] = ray.get(ref)
                    bar.update()
        return [r for r in results if r is not None]
    finally:
        if started:
            ray.shutdown()


EXECUTORS: dict[str, Callable[..., list[TaskResult]]] = {"serial": run_serial, "ray": run_ray}


# ------------------------------------------------------------------------------------------------- reports
def _censored(df: Any) -> Any:
    """``df`` with ``rounds_to_target_censored``: unreached episodes at their env's round budget."""
    budgets = {}
    for env, env_rows in df.groupby("env", sort=False):
        has_budget = "budget" in env_rows and env_rows["budget"].notna().any()
        budgets[env] = float(env_rows["budget"].max() if has_budget else env_rows["rounds"].max())
    return df.assign(rounds_to_target_censored=df["rounds_to_target"].fillna(df["env"].map(budgets)))


def summarize(rows: Any, baseline: str | None = None) -> Any:
    """Mean and 95% CI half-width of every summary metric per (env, controller), as a DataFrame.

    ``rounds_to_target_censored`` counts episodes that never reached the target at their round budget (the
    env's time limit, or the most rounds any episode of that env ran); the other ``*_to_target`` columns
    average over the episodes that reached it.

    With a ``baseline`` controller, ``rounds_reduction`` is the paired relative reduction of the censored
    rounds-to-target, ``1 - rounds(controller) / rounds(baseline)``, averaged over the (seed, episode) pairs
    both ran -- pairing on the seed (same federation) removes most of the seed-to-seed variance.
    """
    import pandas as pd

    from qflgym.agents.plots import mean_ci

    df = _censored(pd.DataFrame(rows))
    out = []
    for (env, controller), g in df.groupby(["env", "controller"], sort=False):
        rec: dict[str, Any] = {
            "env": env,
            "controller": controller,
            "episodes": len(g),
            "reached": int(g["reached"].sum()),
        }
        for col, _, _ in SUMMARY_METRICS:
            values = g[col].to_numpy(float)
            if col.startswith("bytes"):
                values = values / 1e6
            mean, half = mean_ci(values)
            rec[col] = float(mean)
            rec[f"{col}_ci95"] = float(half)
        rec["rounds_reduction"] = rec["rounds_reduction_ci95"] = float("nan")
        base = df[(df["env"] == env) & (df["controller"] == baseline)] if baseline else df.iloc[0:0]
        if len(base):
            key = ["seed", "episode"]
            pairs = g.merge(base, on=key, suffixes=("", "_base"))
            if len(pairs):
                ratio = pairs["rounds_to_target_censored"] / pairs["rounds_to_target_censored_base"]
                mean, half = mean_ci(1.0 - ratio.to_numpy(float))
                rec["rounds_reduction"], rec["rounds_reduction_ci95"] = float(mean), float(half)
        out.append(rec)
    return pd.DataFrame(out)


def _cell(mean: float, half: float, fmt: str) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{fmt.format(mean)} ± {fmt.format(half)}"


def write_markdown(summary: Any, path: Path, suite: BenchSuite, extra_lines: Sequence[str] = ()) -> Path:
    """Write the summary as one Markdown table per env."""
    baseline = suite.baseline if suite.baseline in {c.name for c in suite.controllers} else None
    lines = [f"# Benchmark `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description.strip(), ""]
    lines += [
        f"Seeds: {', '.join(map(str, suite.seeds))} × {suite.episodes_per_seed} episode(s). "
        "Cells: mean ± 95% CI half-width (t-distribution over episodes).",
        "",
        "† unreached episodes counted at the round budget; the other →target columns average the episodes "
        "that reached the target (`reached`). Accuracy is test accuracy; the target is checked on validation "
        "accuracy. MB are uploaded megabytes; sim s is simulated wall time.",
        "",
    ]
    if baseline:
        lines += [
            f"`rounds saved vs {baseline}†`: paired over seeds, 1 − rounds→target† / rounds→target† of "
            f"{baseline} on the same seed (positive = fewer rounds).",
            "",
        ]
    lines += list(extra_lines)
    for env, g in summary.groupby("env", sort=False):
        lines += [f"## {env}", ""]
        header = ["controller", "reached", *[h for _, h, _ in SUMMARY_METRICS]]
        if baseline:
            header.insert(2, f"rounds saved vs {baseline}†")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for _, r in g.iterrows():
            cells = [str(r["controller"]), f"{int(r['reached'])}/{int(r['episodes'])}"]
            if baseline:
                cells.append(_percent(r["rounds_reduction"], r["rounds_reduction_ci95"]))
            cells += [_cell(r[c], r[f"{c}_ci95"], fmt) for c, _, fmt in SUMMARY_METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _percent(mean: float, half: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{100 * mean:.0f}% ± {100 * half:.0f}%"


@dataclass(frozen=True)
class BenchOutput:
    """Where a benchmark wrote its files."""

    out_dir: Path
    results_csv: Path
    curves_csv: Path
    results_md: Path
    plots: list[Path]


def run_suite(
    suite: BenchSuite,
    out_dir: str | Path,
    executor: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    argv: Sequence[str] | None = None,
) -> BenchOutput:
    """Run every task of ``suite`` and write results, summary and plots to ``out_dir``.

    Args:
        suite: The validated suite.
        out_dir: Output directory (created).
        executor: ``ray`` or ``serial``; default the suite's.
        num_cpus: CPUs of a local Ray instance; default the suite's (else all).
        progress: Show a progress bar.
        argv: Command line to record (default ``sys.argv``).
    """
    kind = executor or suite.executor.kind
    if kind not in EXECUTORS:
        raise ConfigError(f"executor: unknown executor {kind!r}; allowed: {', '.join(EXECUTORS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.yaml").write_text(yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False))
    (out / "command.txt").write_text(shlex.join(sys.argv if argv is None else list(argv)) + "\n")
    tasks = tasks_of(suite)
    start = time.perf_counter()
    if kind == "ray":
        results = run_ray(tasks, num_cpus=num_cpus or suite.executor.num_cpus, progress=progress)
    else:
        results = run_serial(tasks, progress=progress)
    elapsed = time.perf_counter() - start
    return write_results(out, suite, results, [f"{len(tasks)} tasks, executor `{kind}`, {elapsed:.1f} s.", ""])


def write_results(
    out: Path, suite: BenchSuite, results: Sequence[TaskResult], extra_lines: Sequence[str] = ()
) -> BenchOutput:
    """Write ``results.csv``, ``curves.csv``, ``summary.csv``, ``results.md`` and the plots of ``results``."""
    import pandas as pd

    from qflgym.agents.plots import plot_suite

    rows = [row for r in results for row in r.rows]
    curves = [c for r in results for c in r.curves]
    df = pd.DataFrame(rows)
    extras = [c for c in df.columns if c not in RESULT_COLUMNS]
    df = df[[*RESULT_COLUMNS, *extras]]
    results_csv = out / "results.csv"
    df.to_csv(results_csv, index=False)
    curves_df = pd.DataFrame(curves)
    curves_csv = out / "curves.csv"
    curves_df.to_csv(curves_csv, index=False)
    summary = summarize(df, baseline=suite.baseline)
    summary.to_csv(out / "summary.csv", index=False)
    results_md = write_markdown(summary, out / "results.md", suite, extra_lines=extra_lines)
    plots = plot_suite(curves_df, out / "plots")
    return BenchOutput(out, results_csv, curves_csv, results_md, plots)
