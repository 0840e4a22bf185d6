"""``qflgym eval``: evaluate a trained model or a registered controller on an env and print a table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qflgym.agents.cli.args import Column, cell, console, mapping_arg, metrics_table, nan_mean
from qflgym.agents.cli.commands import Command, UserInputError

#: The columns of the table: one row per episode, then their mean (MB are uploaded megabytes).
EVAL_COLUMNS: tuple[Column, ...] = (
    ("seed", "seed", "{:.0f}"),
    ("return", "return", "{:.3f}"),
    ("final_accuracy", "final acc", "{:.3f}"),
    ("rounds", "rounds", "{:.0f}"),
    ("rounds_to_target", "rounds→target", "{:.0f}"),
    ("total_bytes_uploaded", "MB up", "{:.3f}"),
    ("total_wall_time_s", "sim wall s", "{:.2f}"),
    ("runtime_s", "real s", "{:.2f}"),
)


def _configure_eval(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="a trained model (.zip) or a qflgym train run directory")
    who.add_argument("--controller", help="a registered controller (see `qflgym list`), e.g. power-of-choice")
    p.add_argument("--kwargs", help="controller keyword arguments: inline YAML ('{k: 3}') or a YAML file")
    p.add_argument("--algo", help="algorithm of --model (default: read from its run directory)")
    p.add_argument("--env", required=True, help="env id")
    p.add_argument("--env-config", help="env config overrides: inline YAML or a YAML file")
    p.add_argument("--episodes", type=int, default=5, help="episodes (default 5)")
    p.add_argument(
        "--seed",
        type=int,
        default=100_000,
        help="seed of the first episode; episode i uses seed+i (default 100000, disjoint from training)",
    )
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of deterministic ones")
    p.add_argument("--json", dest="json_path", help="also write the per-episode rows as JSON to this path")


def _run_eval(args: argparse.Namespace) -> int:
    from qflgym.agents.controllers import make_controller
    from qflgym.agents.evaluation import evaluate
    from qflgym.agents.runtime import check_env_id, limited_threads, make_env

    if args.episodes < 1:
        raise UserInputError(f"--episodes must be >= 1, got {args.episodes}")
    check_env_id(args.env)
    env = make_env(args.env, mapping_arg(args.env_config, "--env-config"))
    if args.model:
        controller = make_controller("sb3", env, path=args.model, algo=args.algo)
        label = args.model
    else:
        controller = make_controller(args.controller, env, seed=args.seed, **mapping_arg(args.kwargs, "--kwargs"))
        label = args.controller
    seeds = [args.seed + i for i in range(args.episodes)]
    with limited_threads(1):
        rows = evaluate(env, controller, seeds, deterministic=not args.stochastic)
    env.close()
    shown = [{**r, "total_bytes_uploaded": r["total_bytes_uploaded"] / 1e6} for r in rows]
    table = metrics_table(f"{label} on {args.env}", EVAL_COLUMNS)
    for row in shown:
        table.add_row(*(cell(row[key], fmt) for key, _, fmt in EVAL_COLUMNS))
    table.add_section()
    table.add_row("mean", *(cell(nan_mean(shown, key), fmt) for key, _, fmt in EVAL_COLUMNS[1:]))
    console().print(table)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2))
    return 0


COMMAND = Command("eval", "evaluate a trained model or a controller on an env", _configure_eval, _run_eval)
