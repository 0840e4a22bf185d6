"""Run a federation for a number of rounds with a progress bar and a per-round table.

``python -m qflgym.qfl_core.run --preset default --rounds 30`` trains the default preset with every client
selected each round (plain FedAvg, no controller) and prints a table of the rounds; ``--out DIR`` also writes
the reports as JSON lines next to the resolved config and command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .config import FederationConfig
from .federation import Federation, RoundReport


def train(federation: Federation, rounds: int, console: Console | None = None) -> list[RoundReport]:
    """Run ``rounds`` rounds selecting every client, with a progress bar; return the reports."""
    reports: list[RoundReport] = []
    columns = (
        TextColumn("[bold]federated training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("val acc {task.fields[acc]:.3f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("rounds", total=rounds, acc=float("nan"))
        for _ in range(rounds):
            report = federation.run_round(range(federation.n_clients))
            reports.append(report)
            progress.update(task, advance=1, acc=report.val_accuracy)
    return reports


def rounds_table(reports: Sequence[RoundReport], every: int = 1) -> Table:
    """A rich table with one row per round (every ``every``-th round, and the last)."""
    table = Table(title="federated rounds")
    for column in ("round", "clients", "val acc", "val loss", "test acc", "MB up", "shots", "wall s"):
        table.add_column(column, justify="right")
    up = shots = wall = 0.0
    for i, r in enumerate(reports):
        up += r.bytes_uploaded / 1e6
        shots += r.shots_used
        wall += r.wall_time_s
        if i % every == 0 or i == len(reports) - 1:
            table.add_row(
                str(r.round),
                str(len(r.participants)),
                f"{r.val_accuracy:.3f}",
                f"{r.val_loss:.4f}",
                f"{r.test_accuracy:.3f}",
                f"{up:.3f}",
                f"{shots:.0f}",
                f"{wall:.2f}",
            )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m qflgym.qfl_core.run", description=__doc__)
    parser.add_argument("--preset", default="default", help="preset in configs/federations/ (default: default)")
    parser.add_argument("--config", type=Path, help="a federation YAML file (overrides --preset)")
    parser.add_argument("--rounds", type=int, default=30, help="rounds to run (default: 30)")
    parser.add_argument("--seed", type=int, default=0, help="the federation seed (default: 0)")
    parser.add_argument("--every", type=int, default=1, help="print every n-th round in the table")
    parser.add_argument("--out", type=Path, help="directory for reports.jsonl, config.yaml and command.txt")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    config = FederationConfig.from_yaml(args.config) if args.config else FederationConfig.from_preset(args.preset)
    console = Console()
    federation = Federation(config, seed=args.seed)
    reports = train(federation, args.rounds, console)
    console.print(rounds_table(reports, every=args.every))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        (args.out / "command.txt").write_text(" ".join([sys.executable, "-m", "qflgym.qfl_core.run", *argv]))
        with (args.out / "reports.jsonl").open("w") as fh:
            for report in reports:
                fh.write(json.dumps(dataclasses.asdict(report)) + "\n")
        console.print(f"wrote {args.out}/reports.jsonl, config.yaml, command.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
