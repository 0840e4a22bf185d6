"""The ``qflgym`` command line: ``train``, ``eval``, ``bench``, ``demo``, ``list`` (and plugin groups).

Subcommands are entries of :data:`COMMANDS` (a :class:`~qflgym.qfl_core.registry.Registry` of
:class:`Command`). Built-in commands are registered below; plugin modules listed in :data:`COMMAND_MODULES`
(``qflgym.agents.llm.cli``, which adds the ``llm`` group) are imported when present, and installed packages
can add commands through the entry-point group ``qflgym.commands``. A plugin registers itself with::

    from qflgym.agents.cli import COMMANDS, Command

    def configure(parser):            # add arguments, or sub-subparsers for a command group
        sub = parser.add_subparsers(dest="llm_command", required=True)
        sft = sub.add_parser("sft", help="distil a controller into the LLM policy")
        sft.set_defaults(run=run_sft)  # a sub-subcommand overrides ``run`` with set_defaults

    COMMANDS.add("llm", Command("llm", "LLM policies: sft, grpo, eval", configure))

A command's ``run(args) -> int`` is looked up as ``args.run`` (so groups can dispatch with
``set_defaults(run=...)``), else the command's own ``run``; ``args.argv`` holds the command line to record next to
results. Heavy imports (torch, SB3, Ray) happen inside the
``run`` functions so ``qflgym --help`` stays fast, and so that :func:`main` can default ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` to 1 before numpy/torch load (see :func:`limit_native_threads`;
values already exported win). Errors a user can fix (unknown names, missing files,
invalid configs) print one clear message and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qflgym.qfl_core.registry import Registry, import_available

__all__ = [
    "COMMANDS",
    "COMMAND_MODULES",
    "SINGLE_THREAD_ENV",
    "Command",
    "build_parser",
    "limit_native_threads",
    "main",
]


@dataclass(frozen=True)
class Command:
    """One ``qflgym`` subcommand.

    Attributes:
        name: The subcommand (``train``).
        help: One line for ``qflgym --help``.
        configure: Adds the subcommand's arguments (or its own subparsers) to its parser.
        run: ``run(args) -> exit status``; optional when ``configure`` sets ``run`` per sub-subcommand.
        description: Longer text for ``qflgym <name> --help`` (default: ``help``).
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int] | None = None
    description: str | None = None


#: Subcommands by name.
COMMANDS: Registry[Command] = Registry("qflgym command", entry_point_group="qflgym.commands")

#: Modules imported (when installed) so that they register their commands.
COMMAND_MODULES: tuple[str, ...] = ("qflgym.agents.llm.cli",)

#: Thread variables set (unless already set) by :func:`main` before anything imports numpy or torch.
SINGLE_THREAD_ENV: dict[str, str] = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: Exceptions reported as one-line user errors (exit status 2).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, TypeError, FileNotFoundError)


# --------------------------------------------------------------------------------------------------- helpers
def _mapping_arg(text: str | None, what: str) -> dict[str, Any]:
    """Parse a YAML/JSON mapping given inline or as a path to a file."""
    if not text:
        return {}
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
        text = path.read_text()
    value = yaml.safe_load(text)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a mapping (inline YAML like '{{k: 3}}' or a file), got {text!r}")
    return value


def _suite_path(name: str) -> Path:
    """A suite file path, or the name of a packaged suite in ``configs/bench/``."""
    path = Path(name)
    if path.is_file():
        return path
    if path.suffix or os.sep in name:
        raise FileNotFoundError(f"bench suite not found: {path}")
    from importlib import resources

    folder = resources.files("qflgym.configs") / "bench"
    for suffix in (".yaml", ".yml"):
        candidate = folder / f"{name}{suffix}"
        if candidate.is_file():
            return Path(str(candidate))
    packaged = sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith((".yaml", ".yml")))
    raise FileNotFoundError(
        f"bench suite not found: {name!r} is neither a file nor a packaged suite ({', '.join(packaged)})"
    )


def _console() -> Any:
    from rich.console import Console

    return Console()


# ----------------------------------------------------------------------------------------------------- train
def _configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algo", required=True, help="ppo, a2c, dqn, sac, td3 or maskable-ppo")
    p.add_argument("--env", required=True, help="env id, e.g. QFL/ClientSelection-v0")
    p.add_argument("--env-config", help="env config overrides: inline YAML ('{n_clients: 8}') or a YAML file")
    p.add_argument(
        "--hyperparams",
        "--conf-file",
        dest="hyperparams",
        help="zoo-format YAML keyed by env id (default: the packaged configs/agents/<algo>.yml)",
    )
    p.add_argument(
        "--set",
        "-params",
        dest="overrides",
        nargs="+",
        metavar="KEY=VALUE",
        help="hyperparameter overrides, e.g. --set n_steps=256 learning_rate=lin_1e-3",
    )
    p.add_argument("--timesteps", "-n", type=int, help="total env steps (default: the file's n_timesteps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the algorithm and training envs (default 0)")
    p.add_argument("--n-envs", type=int, help="vectorized training envs (default: the file's n_envs, else 1)")
    p.add_argument(
        "--vec-env",
        choices=("dummy", "subproc", "batched"),
        default="dummy",
        help="VecEnv class (batched: every env's round in shared simulator calls)",
    )
    p.add_argument("--out", default="runs", help="parent folder of the run directory (default runs/)")
    p.add_argument("--run-name", help="run directory name (default <env>__s<seed>__<time>)")
    p.add_argument("--eval-freq", type=int, default=10_000, help="evaluate every N env steps (0: never)")
    p.add_argument("--eval-episodes", type=int, default=5, help="episodes per periodic evaluation")
    p.add_argument("--save-freq", type=int, default=50_000, help="checkpoint every N env steps (0: never)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch/BLAS threads per process (default 1: fastest for small circuits and MLPs)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    p.add_argument("--verbose", type=int, default=0, choices=(0, 1, 2), help="SB3 verbosity")


def _run_train(args: argparse.Namespace) -> int:
    from qflgym.agents.algorithms import ALGORITHMS
    from qflgym.agents.hyperparams import parse_overrides
    from qflgym.agents.sb3_training import train

    ALGORITHMS.get(args.algo)  # unknown algorithm: fail before building anything
    if args.hyperparams and not Path(args.hyperparams).is_file():
        raise FileNotFoundError(f"hyperparameter file not found: {args.hyperparams}")
    config = {
        "algo": args.algo,
        "env": args.env,
        "env_config": _mapping_arg(args.env_config, "--env-config"),
        "hyperparams": args.hyperparams,
        "overrides": parse_overrides(args.overrides),
        "timesteps": args.timesteps,
        "seed": args.seed,
        "n_envs": args.n_envs,
        "vec_env": args.vec_env,
        "out": args.out,
        "run_name": args.run_name,
        "eval_freq": args.eval_freq,
        "eval_episodes": args.eval_episodes,
        "save_freq": args.save_freq,
        "progress": not args.no_progress,
        "tensorboard": not args.no_tensorboard,
        "device": args.device,
        "torch_threads": args.torch_threads,
        "verbose": args.verbose,
    }
    result = train(config, argv=args.argv)
    console = _console()
    console.print(
        f"[bold green]trained[/] {args.algo} on {args.env}: {result.timesteps} steps in "
        f"{result.seconds:.1f} s "
        f"({result.steps_per_second:.0f} steps/s)"
    )
    console.print(f"run directory: {result.run_dir}", soft_wrap=True)
    console.print(f"final model:   {result.model_path}", soft_wrap=True)
    if result.best_model_path:
        console.print(f"best model:    {result.best_model_path}", soft_wrap=True)
    return 0


# ------------------------------------------------------------------------------------------------------ eval
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
    from rich.table import Table

    from qflgym.agents.controllers import make_controller
    from qflgym.agents.evaluation import evaluate
    from qflgym.agents.runtime import limited_threads
    from qflgym.agents.sb3_training import check_env_id, make_env

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    check_env_id(args.env)
    env = make_env(args.env, _mapping_arg(args.env_config, "--env-config"))
    if args.model:
        controller = make_controller("sb3", env, path=args.model, algo=args.algo)
        label = args.model
    else:
        controller = make_controller(args.controller, env, seed=args.seed, **_mapping_arg(args.kwargs, "--kwargs"))
        label = args.controller
    seeds = [args.seed + i for i in range(args.episodes)]
    with limited_threads(1):
        rows = evaluate(env, controller, seeds, deterministic=not args.stochastic)
    env.close()
    table = Table(title=f"{label} on {args.env}")
    columns = [
        ("seed", "seed", "{:.0f}"),
        ("return", "return", "{:.3f}"),
        ("final_accuracy", "final acc", "{:.3f}"),
        ("rounds", "rounds", "{:.0f}"),
        ("rounds_to_target", "rounds→target", "{:.0f}"),
        ("total_bytes_uploaded", "MB up", "{:.3f}"),
        ("total_wall_time_s", "sim wall s", "{:.2f}"),
        ("runtime_s", "real s", "{:.2f}"),
    ]
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row[key] / 1e6 if key == "total_bytes_uploaded" else row[key]
            cells.append("–" if value != value else fmt.format(value))
        table.add_row(*cells)
    import numpy as np

    mean = {
        key: float(np.nanmean([r[key] for r in rows])) if any(r[key] == r[key] for r in rows) else float("nan")
        for key, _, _ in columns
    }
    table.add_section()
    table.add_row(
        "mean",
        *[
            "–" if mean[k] != mean[k] else fmt.format(mean[k] / 1e6 if k == "total_bytes_uploaded" else mean[k])
            for k, _, fmt in columns[1:]
        ],
    )
    _console().print(table)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2))
    return 0


# ----------------------------------------------------------------------------------------------------- bench
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
    from qflgym.agents.benchmark import load_suite, run_suite

    path = _suite_path(args.suite)
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
    console = _console()
    console.print(Path(result.results_md).read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"[bold green]results[/]: {result.results_csv}", soft_wrap=True)
    console.print(f"[bold green]table[/]:   {result.results_md}", soft_wrap=True)
    for plot in result.plots:
        console.print(f"[bold green]plot[/]:    {plot}", soft_wrap=True)
    return 0


# ------------------------------------------------------------------------------------------------------ demo
def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a fast variant (small budget, 2 seeds) to check the pipeline")
    p.add_argument("--out", help="output directory (default runs/demo__<time>)")
    p.add_argument("--timesteps", type=int, help="PPO training steps (default 40000; --quick: 1024)")
    p.add_argument("--seeds", type=int, help="evaluation seeds (default 5; --quick: 2)")
    p.add_argument("--n-envs", type=int, default=2, help="vectorized training envs (default 2)")
    p.add_argument("--executor", choices=("ray", "serial"), default="ray", help="benchmark executor (default ray)")
    p.add_argument("--env", default="QFL/ClientSelection-v0", help="env id (default QFL/ClientSelection-v0)")
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
        env_id=args.env,
    )
    return 0


# ------------------------------------------------------------------------------------------------------ list
def _configure_list(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "what",
        nargs="?",
        choices=("controllers", "algorithms", "envs", "suites"),
        help="what to list (default: everything)",
    )


def _run_list(args: argparse.Namespace) -> int:
    from importlib import resources

    sections: dict[str, list[str]] = {}
    if args.what in (None, "controllers"):
        from qflgym.agents.controllers import controller_names

        sections["controllers"] = controller_names()
    if args.what in (None, "algorithms"):
        from qflgym.agents.algorithms import ALGORITHMS

        sections["algorithms"] = [f"{n} ({', '.join(ALGORITHMS.get(n).action_spaces)})" for n in ALGORITHMS.names()]
    if args.what in (None, "envs"):
        import gymnasium as gym

        import qflgym.envs  # noqa: F401

        sections["envs"] = sorted(k for k in gym.registry if k.startswith("QFL/"))
    if args.what in (None, "suites"):
        folder = resources.files("qflgym.configs") / "bench"
        sections["suites"] = sorted(
            p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith((".yaml", ".yml"))
        )
    for title, names in sections.items():
        print(f"{title}:")
        for name in names:
            print(f"  {name}")
    return 0


for _command in (
    Command(
        "train",
        "train an SB3 / sb3-contrib agent on a qflgym env",
        _configure_train,
        _run_train,
        "Train ppo, a2c, dqn, sac, td3 or maskable-ppo with zoo-format hyperparameters; writes a run "
        "directory with the resolved config, the command line, TensorBoard logs, checkpoints and models.",
    ),
    Command("eval", "evaluate a trained model or a controller on an env", _configure_eval, _run_eval),
    Command("bench", "run a benchmark suite (controllers × envs × seeds) on Ray", _configure_bench, _run_bench),
    Command(
        "demo",
        "train PPO on QFL/ClientSelection-v0 and benchmark it against the heuristics",
        _configure_demo,
        _run_demo,
    ),
    Command("list", "list controllers, algorithms, envs and packaged suites", _configure_list, _run_list),
):
    COMMANDS.add(_command.name, _command)


# ------------------------------------------------------------------------------------------------------ main
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
    limits pools that already exist; without the variables a second busy thread per process remained (PPO on
    ``QFL/ClientSelection-v0``: 14 instead of 70-85 steps/s on a shared 2-core machine). Subprocesses (vector
    env workers, Ray tasks) inherit the variables. Export e.g. ``OMP_NUM_THREADS=4`` to override.
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
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"qflgym {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
