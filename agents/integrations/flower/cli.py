"""``qflgym flower run``: a Flower simulation of a qflgym env driven by a controller, reported as ``qflgym bench``.

::

    qflgym flower run --controller power-of-choice --env QFL/ClientSelection-Tiny-v0 --seeds 1000 1001
    qflgym flower run --model runs/ppo/best_model.zip --env QFL/ClientSelection-v0 --compare-env

One Flower simulation per seed (Flower's Ray engine by default, ``--backend local`` in this process) writes
``results.csv``, ``curves.csv``, ``summary.csv``, ``results.md`` and the plots, exactly as ``qflgym bench``
does. ``--compare-env`` also runs the controller on the env itself (labels ``<name> (flower)`` and
``<name> (env)``) and reports the largest per-round difference of the curves.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from qflgym.agents.cli.args import console as _console
from qflgym.agents.cli.args import mapping_arg as _mapping_arg
from qflgym.agents.cli.commands import COMMANDS, Command

__all__ = ["compare_curves"]

#: The per-round curve columns ``--compare-env`` compares.
COMPARED = ("accuracy", "val_accuracy", "bytes_uploaded", "wall_time_s", "shots", "reward", "participants")


def compare_curves(flower: list[dict[str, Any]], env: list[dict[str, Any]]) -> dict[str, float]:
    """Largest absolute difference of each :data:`COMPARED` column, round by round (inf if the lengths differ)."""
    if len(flower) != len(env):
        return dict.fromkeys(COMPARED, float("inf"))
    return {k: max(abs(float(a[k]) - float(b[k])) for a, b in zip(flower, env, strict=True)) for k in COMPARED}


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="flower_command", required=True)
    p = sub.add_parser("run", help="run a Flower simulation driven by a controller")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--controller", help="a registered controller (qflgym list shows them)")
    who.add_argument("--model", help="a trained SB3 model (.zip or run directory)")
    p.add_argument("--kwargs", help="controller keyword arguments, inline YAML or a file (e.g. '{k: 3}')")
    p.add_argument("--env", default="QFL/ClientSelection-Tiny-v0", help="env id (default %(default)s)")
    p.add_argument("--preset", nargs="+", default=[], help="env presets (configs/envs/<name>.yaml) merged in order")
    p.add_argument("--env-config", help="env config overrides, inline YAML or a file")
    p.add_argument("--seeds", type=int, nargs="+", default=[1000], help="reset seeds, one run each")
    p.add_argument("--backend", choices=("ray", "local"), default="ray", help="Flower's Ray engine, or in-process")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--compare-env", action="store_true", help="also run the controller on the env and compare")
    p.add_argument("--out", help="output directory (default runs/flower/<controller>__<time>)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from qflgym.agents.bench.run import write_results
    from qflgym.agents.bench.suite import BenchSuite, ControllerEntry, EnvEntry
    from qflgym.agents.bench.tasks import Task, run_task
    from qflgym.envs.config import merge_presets

    try:
        from .bench import run_flower_task
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "flwr":
            raise FileNotFoundError('qflgym flower needs flwr: pip install "qflgym[flower]"') from err
        raise

    kwargs = _mapping_arg(args.kwargs, "--kwargs")
    if args.model:
        kwargs = {**kwargs, "path": args.model}
    name = args.controller or "sb3"
    env_config = merge_presets(_mapping_arg(args.env_config, "--env-config"), *args.preset)
    env = EnvEntry(id=args.env, config=env_config)
    flower = ControllerEntry(name=f"{name} (flower)", controller=name, kwargs=kwargs)
    controllers = [flower]
    if args.compare_env:
        controllers.append(ControllerEntry(name=f"{name} (env)", controller=name, kwargs=kwargs))
    suite = BenchSuite(
        name="flower",
        description=f"`{args.env}` as a Flower simulation ({args.backend} backend) driven by `{name}`.",
        seeds=args.seeds,
        envs=[env],
        controllers=controllers,
        baseline=None,
    )
    out = Path(args.out or Path("runs") / "flower" / f"{name}__{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "command.txt").write_text(shlex.join(args.argv) + "\n")
    start = time.perf_counter()
    results = []
    lines = []
    for seed in args.seeds:
        task = Task(suite.name, flower, env, seed, 1)
        result = run_flower_task(task, backend=args.backend, num_cpus=args.num_cpus)
        results.append(result)
        if args.compare_env:
            reference = run_task(Task(suite.name, controllers[1], env, seed, 1))
            results.append(reference)
            diff = compare_curves(result.curves, reference.curves)
            lengths = f"{len(result.curves) - 1} vs {len(reference.curves) - 1} rounds"
            lines.append(
                f"seed {seed} ({lengths}): largest |flower − env| per round: "
                + ", ".join(f"{k} {v:.3g}" for k, v in diff.items())
            )
    elapsed = time.perf_counter() - start
    output = write_results(out, suite, results, [*lines, "", f"{len(args.seeds)} Flower run(s), {elapsed:.1f} s.", ""])
    console = _console()
    console.print(output.results_md.read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"[bold green]results[/]: {output.results_csv}", soft_wrap=True)
    return 0


COMMANDS.add("flower", Command("flower", "run qflgym controllers as Flower strategies (flower run)", _configure))
