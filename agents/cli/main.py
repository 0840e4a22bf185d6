"""The ``qflgym`` command line: ``train``, ``eval``, ``bench``, ``demo``, ``list`` (and plugin groups).

Subcommands are entries of :data:`~qflgym.agents.cli.commands.COMMANDS` (a :class:`~qflgym.registry.Registry` of
:class:`~qflgym.agents.cli.commands.Command`). The built-in commands live one per module in this package;
plugin modules listed in :data:`COMMAND_MODULES` (``qflgym.agents.llm.cli``, which adds the ``llm`` group) are
imported when present, and installed packages can add commands through the entry-point group
``qflgym.commands``.

A command's ``run(args) -> int`` is looked up as ``args.run`` (so groups can dispatch with
``set_defaults(run=...)``), else the command's own ``run``; ``args.argv`` holds the command line to record next to
results. Heavy imports (torch, SB3, Ray) happen inside the ``run`` functions so ``qflgym --help`` stays fast, and
so that :func:`main` can default ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` to 1 before
numpy/torch load (see :func:`limit_native_threads`; values already exported win). Errors a user can fix
(:data:`~qflgym.agents.cli.commands.USER_ERRORS`: invalid configs and values, missing files) print one clear
message and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import MutableMapping, Sequence

from qflgym.agents.cli import bench, demo, evaluate, listing, train
from qflgym.agents.cli.commands import COMMANDS, USER_ERRORS, Command
from qflgym.registry import import_available

__all__ = ["BUILTIN_COMMANDS", "COMMAND_MODULES", "SINGLE_THREAD_ENV", "build_parser", "limit_native_threads", "main"]

#: The built-in commands, in ``--help`` order.
BUILTIN_COMMANDS: tuple[Command, ...] = (train.COMMAND, evaluate.COMMAND, bench.COMMAND, demo.COMMAND, listing.COMMAND)

#: Modules imported (when installed) so that they register their commands.
COMMAND_MODULES: tuple[str, ...] = ("qflgym.agents.llm.cli", "qflgym.agents.integrations.flower.cli")

#: Thread variables set (unless already set) by :func:`main` before anything imports numpy or torch.
SINGLE_THREAD_ENV: dict[str, str] = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def build_parser() -> argparse.ArgumentParser:
    """The ``qflgym`` parser with every registered command."""
    import_available(COMMAND_MODULES)
    parser = argparse.ArgumentParser(
        prog="qflgym",
        description="Gymnasium environments for controlling quantum federated learning: train agents, "
        "compare controllers, run the demo.",
    )
    from qflgym import __version__

    parser.add_argument("--version", action="version", version=f"qflgym {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in BUILTIN_COMMANDS:
        if command.name not in COMMANDS:
            COMMANDS.add(command.name, command)
    for name in COMMANDS.names():
        command = COMMANDS.get(name)
        p = sub.add_parser(name, help=command.help, description=command.description or command.help)
        command.configure(p)
        if command.run is not None:
            p.set_defaults(run=command.run)
    return parser


def limit_native_threads(environ: MutableMapping[str, str] = os.environ) -> None:
    """Default the OpenMP/OpenBLAS/MKL thread counts to 1 (``setdefault``: values already set are kept).

    These libraries read the variables once, when they are loaded, so this must run before the first import
    of numpy or torch: :func:`main` calls it first, and this module imports neither at module level (plugin
    modules are imported later, by :func:`build_parser`). :func:`qflgym.agents.runtime.limited_threads` only
    limits pools that already exist; without the variables a second busy thread per process remains
    (``benchmarks/train_speed.py`` measures the cost, docs/results.md records it). Subprocesses (vector env
    workers, Ray tasks) inherit the variables. Export e.g. ``OMP_NUM_THREADS=4`` to override.
    """
    for name, value in SINGLE_THREAD_ENV.items():
        environ.setdefault(name, value)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qflgym`` console script; returns the exit status.

    Sets the single-thread defaults of :func:`limit_native_threads` before any command imports numpy/torch.
    """
    limit_native_threads()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = ["qflgym", *argv]  # the command line, recorded next to results
    debug = args.debug or os.environ.get("QFLGYM_DEBUG") == "1"
    run = getattr(args, "run", None)
    if run is None:
        parser.error(f"command {args.command!r} needs a subcommand")
    try:
        return int(run(args) or 0)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"qflgym {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
