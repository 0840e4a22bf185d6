"""``qflgym bench``: run a benchmark suite (:mod:`qflgym.agents.bench`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from qflgym.agents.cli.args import console, suite_path
from qflgym.agents.cli.commands import Command


def _configure_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="suite YAML file, or the name of a packaged suite in configs/bench/ (e.g. tiny)")
    p.add_argument("--out", help="output directory (default runs/bench/<suite>__<time>)")
    p.add_argument("--executor", choices=("ray", "serial"), help="override the suite's executor (default ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", help="override the suite's evaluation seeds")
    p.add_argument(
        "--envs",
        nargs="+",
        metavar="ENV",
        help="run only these envs of the suite (labels or ids), with the controllers that run on them",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_bench(args: argparse.Namespace) -> int:
    from qflgym.agents.bench import load_suite, run_suite

    path = suite_path(args.suite)
    suite = load_suite(path, {"seeds": args.seeds} if args.seeds else None, envs=args.envs)
    out = Path(args.out) if args.out else Path("runs") / "bench" / f"{suite.name}__{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_suite(
        suite,
        out,
        executor=args.executor,
        num_cpus=args.num_cpus,
        progress=not args.no_progress,
        argv=args.argv,
    )
    out = console()
    out.print(Path(result.results_md).read_text(), markup=False, highlight=False, soft_wrap=True)
    out.print(f"[bold green]results[/]: {result.results_csv}", soft_wrap=True)
    out.print(f"[bold green]table[/]:   {result.results_md}", soft_wrap=True)
    for plot in result.plots:
        console.print(f"[bold green]plot[/]:    {plot}", soft_wrap=True)
    return 0


COMMAND = Command("bench", "run a benchmark suite (controllers × envs × seeds) on Ray", _configure_bench, _run_bench)
