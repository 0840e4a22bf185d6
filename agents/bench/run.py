"""Run a benchmark suite (:func:`run_suite`) and write its results, summary, plots and run record.

:func:`run_suite` writes to the output directory::

    config.yaml    the resolved suite (re-runnable)     command.txt   the command line
    run.json       package versions and the executor (Ray cluster address)
    results.csv    one row per episode (columns: RESULT_COLUMNS, then controller-specific extras)
    curves.csv     one row per round of every episode (accuracy, cumulative bytes, wall time, shots, reward)
    summary.csv    mean and 95% CI half-width per controller and env
    results.md     the summary as Markdown tables
    plots/         <env>__accuracy_vs_round.png, <env>__accuracy_vs_bytes.png
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qflgym.agents.bench.executors import EXECUTORS, executor_record, run_ray, run_serial
from qflgym.agents.bench.report import summarize, write_markdown
from qflgym.agents.bench.suite import BenchSuite
from qflgym.agents.bench.tasks import TaskResult, tasks_of
from qflgym.config import ConfigError
from qflgym.runs import write_run_record

__all__ = ["RESULT_COLUMNS", "BenchOutput", "run_suite", "write_results"]

#: The columns every ``results.csv`` starts with.
RESULT_COLUMNS: tuple[str, ...] = (
    "suite",
    "controller",
    "env",
    "env_id",
    "seed",
    "episode",
    "objective",
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
    out = write_run_record(out_dir, suite.model_dump(mode="json"), argv, extra={"executor": executor_record(kind)})
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

    from qflgym.agents.bench.plots import plot_suite

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
    plots = plot_suite(curves_df, out / "plots", rows=df)
    return BenchOutput(out, results_csv, curves_csv, results_md, plots)
