"""``qflgym demo``: train a controller and benchmark it against the heuristics (:mod:`qflgym.agents.demo`)."""

from __future__ import annotations

import argparse

from qflgym.agents.cli.commands import Command


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a fast variant (small budget, 2 seeds) to check the pipeline")
    p.add_argument("--out", help="output directory (default runs/demo__<time>)")
    p.add_argument(
        "--timesteps", type=int, help="PPO steps after cloning the cost-aware teacher (default 0: the clone itself)"
    )
    p.add_argument("--seeds", type=int, help="evaluation seeds (default 20; --quick: 2)")
    p.add_argument("--n-envs", type=int, default=2, help="vectorized training envs (default 2)")
    p.add_argument("--executor", choices=("ray", "serial"), default="ray", help="benchmark executor (default ray)")
    p.add_argument("--env", help="env id, a ClientSelection preset (default the demo's, QFL/ClientSelection-v1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _run_demo(args: argparse.Namespace) -> int:
    from qflgym.agents.demo import run_demo

    run_demo(
        quick=args.quick,
        out=args.out,
        timesteps=args.timesteps,
        n_seeds=args.seeds,
        n_envs=args.n_envs,
        executor=args.executor,
        progress=not args.no_progress,
        argv=args.argv,
        **({"env_id": args.env} if args.env else {}),
    )
    return 0


COMMAND = Command(
    "demo",
    "clone a heuristic into the equivariant policy on QFL/ClientSelection-v1 and benchmark it against the heuristics",
    _configure_demo,
    _run_demo,
)
