"""``qflgym list``: the registered controllers, algorithms, envs and packaged suites."""

from __future__ import annotations

import argparse

from qflgym.agents.cli.commands import Command
from qflgym.config import preset_names


def _configure_list(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        nargs="?",
        choices=("controllers", "algorithms", "envs", "suites"),
        help="what to list (default: everything)",
    )


def _run_list(args: argparse.Namespace) -> int:
    sections: dict[str, list[str]] = {}
    if args.what in (None, "controllers"):
        from qflgym.agents.controllers import controller_names

        sections["controllers"] = controller_names()
    if args.what in (None, "algorithms"):
        from qflgym.agents.training.algorithms import ALGORITHMS

        sections["algorithms"] = [f"{n} ({', '.join(ALGORITHMS.get(n).action_spaces)})" for n in ALGORITHMS.names()]
    if args.what in (None, "envs"):
        import gymnasium as gym

        import qflgym.envs  # noqa: F401

        sections["envs"] = sorted(k for k in gym.registry if k.startswith("QFL/"))
    if args.what in (None, "suites"):
        sections["suites"] = preset_names("bench")
    for title, names in sections.items():
        print(f"{title}:")
        for name in names:
            print(f"  {name}")
    return 0


COMMAND = Command("list", "list controllers, algorithms, envs and packaged suites", _configure_list, _run_list)
