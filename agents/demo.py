"""``qflgym demo``: train a controller on ``QFL/ClientSelection-v1``, then benchmark it against the heuristics.

The demo is the README's first command. It

1. trains the per-client equivariant policy (``configs/agents/equivariant-clone.yml``) by behaviour cloning +
   DAgger from the ``cost-aware`` selection (the packaged recipe ``configs/agents/pretrain-cost-aware.yml``,
   on the demonstration seeds; smaller recipes were measured worse, docs/results.md), then, with
   ``timesteps``, PPO from the clone (training envs seeded ``0 .. n_envs-1``; periodic evaluation on seed
   ``EVAL_SEED_OFFSET``; the best model is kept). PPO from scratch did not find the room in 10 minutes
   (docs/results.md),
2. benchmarks the trained policy against random-k with the k tuned on training seeds (the reference the
   objective savings are paired with), the informed ``cost-aware`` and ``label-complement`` selections and
   Oort-like selection, on 20 evaluation seeds ``DEMO_EVAL_SEEDS_START + i`` -- never used in training (the
   planning oracle's figures are in docs/results.md: it needs minutes per episode),
3. writes ``results.csv``, ``results.md`` and the plots, and prints the table and where everything is.

``--quick`` runs the same pipeline with a tiny budget (a pipeline check, not a result).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from qflgym.agents.bench import BenchOutput, BenchSuite, run_suite
from qflgym.agents.training.imitation import PretrainConfig, demonstration_seeds
from qflgym.agents.training.sb3 import EVAL_SEED_OFFSET, TrainResult, train
from qflgym.config import build_config, preset_path

__all__ = ["DEMO_ENV", "DEMO_EVAL_SEEDS_START", "DEMO_HEURISTICS", "DemoResult", "run_demo"]

#: The env the demo trains and evaluates on.
DEMO_ENV = "QFL/ClientSelection-v1"
#: Evaluation seeds are ``DEMO_EVAL_SEEDS_START + i``: the first of docs/results.md's evaluation seeds (training
#: uses 0..n_envs-1, EVAL_SEED_OFFSET and the demonstration seeds).
DEMO_EVAL_SEEDS_START = 10_000
#: The heuristics the trained policy is compared with (label, controller, kwargs).
DEMO_HEURISTICS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("random-k", "random-k", {"k": 1}),
    ("cost-aware", "cost-aware", {"k": 3}),
    ("cost-aware+loss", "cost-aware", {"k": 3, "loss_weight": 0.5}),
    ("label-complement", "label-complement", {"k": 3}),
    ("oort", "oort", {"k": 2}),
)
#: ``--quick``'s changes to the packaged cloning recipe (a pipeline check, not a result).
QUICK_PRETRAIN: dict[str, Any] = {"episodes": 4, "episode_steps": 4, "epochs": 2, "dagger_iterations": 1}


class DemoResult:
    """Paths produced by the demo.

    Attributes:
        out_dir: The demo's output directory.
        train: The training run.
        bench: The benchmark's outputs.
    """

    def __init__(self, out_dir: Path, train: TrainResult, bench: BenchOutput) -> None:
        self.out_dir, self.train, self.bench = out_dir, train, bench


def run_demo(
    quick: bool = False,
    out: str | Path | None = None,
    timesteps: int | None = None,
    n_seeds: int | None = None,
    n_envs: int = 2,
    executor: str = "ray",
    progress: bool = True,
    argv: Sequence[str] | None = None,
    env_id: str = DEMO_ENV,
) -> DemoResult:
    """Train the equivariant policy and benchmark it against the heuristics (see the module docstring).

    Args:
        quick: Tiny budget and two seeds.
        out: Output directory; default ``runs/demo__<time>``.
        timesteps: PPO steps after the clone; default 0 (the cloned policy is the trained controller).
        n_seeds: Evaluation seeds; default 20 (``quick``: 2).
        n_envs: Vectorized training envs.
        executor: ``ray`` or ``serial`` for the benchmark.
        progress: Show progress bars.
        argv: Command line to record.
        env_id: The env (a ClientSelection preset; the default is the demo's).
    """
    from rich.console import Console

    console = Console()
    out_dir = Path(out) if out else Path("runs") / f"demo__{time.strftime('%Y%m%d-%H%M%S')}"
    timesteps = timesteps or 0
    n_seeds = n_seeds or (2 if quick else 20)
    train_seed = 0
    packaged = yaml.safe_load(preset_path("agents", "pretrain-cost-aware").read_text())
    recipe = build_config(PretrainConfig, packaged | (QUICK_PRETRAIN if quick else {}), "demo pretrain")
    then_ppo = f", then {timesteps} PPO steps" if timesteps else ""
    console.rule(f"[bold]1/2  cloning {recipe.teacher} into the equivariant policy on {env_id}{then_ppo}")
    overrides: dict[str, Any] = {"n_steps": 128, "batch_size": 64, "n_epochs": 2} if quick else {}
    result = train(
        {
            "algo": "ppo",
            "env": env_id,
            "hyperparams": str(preset_path("agents", "equivariant-clone")),
            "timesteps": timesteps,
            "pretrain": recipe.model_dump(),
            "seed": train_seed,
            "n_envs": n_envs,
            "out": str(out_dir),
            "run_name": "train",
            "overrides": overrides,
            "eval_freq": max(timesteps // 4, 1) if timesteps else 0,
            "eval_episodes": 1 if quick else 5,
            "save_freq": 0,
            "progress": progress,
        },
        argv=argv,
    )
    cloned_s = result.pretrained.seconds if result.pretrained else 0.0
    console.print(f"cloned in {cloned_s:.0f} s, {result.timesteps} PPO steps in {result.seconds:.0f} s")
    console.print(f"run: {result.run_dir}", soft_wrap=True)

    seeds = [DEMO_EVAL_SEEDS_START + i for i in range(n_seeds)]
    used_in_training = (
        {train_seed + i for i in range(n_envs)}
        | {train_seed + EVAL_SEED_OFFSET}
        | set(demonstration_seeds(recipe, train_seed))
    )
    assert not used_in_training & set(seeds), "evaluation seeds must differ from training seeds"
    model = result.best_model_path or result.model_path
    sb3_kwargs = {"path": str(model), "algo": "ppo"}
    learned = f"the equivariant policy cloned from {recipe.teacher} (BC + DAgger){then_ppo}"
    suite = build_config(
        BenchSuite,
        {
            "name": "demo",
            "description": (f"{learned}, trained on {env_id}, evaluated on unseen seeds against selection heuristics."),
            "baseline": "random-k",
            "seeds": seeds,
            "envs": [{"id": env_id}],
            "controllers": [
                # Deterministic: the cohort of the 3 best scores (sampled scores cost more, docs/results.md).
                {"name": "clone", "controller": "sb3", "kwargs": sb3_kwargs, "deterministic": True},
                *[{"name": label, "controller": name, "kwargs": kwargs} for label, name, kwargs in DEMO_HEURISTICS],
            ],
            "executor": {"kind": executor},
        },
        "demo suite",
    )
    console.rule(f"[bold]2/2  benchmarking on {n_seeds} unseen seeds ({executor})")
    bench = run_suite(suite, out_dir / "bench", executor=executor, progress=progress, argv=argv)
    console.print(bench.results_md.read_text(), markup=False, highlight=False, soft_wrap=True)
    console.rule("[bold green]done")
    console.print(f"trained model: {model}", soft_wrap=True)
    console.print(f"results table: {bench.results_md}", soft_wrap=True)
    console.print(f"per-episode:   {bench.results_csv}", soft_wrap=True)
    for plot in bench.plots:
        console.print(f"plot:          {plot}", soft_wrap=True)
    return DemoResult(out_dir, result, bench)
