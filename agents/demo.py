"""``qflgym demo``: train PPO on ``QFL/ClientSelection-v1``, then benchmark it against the heuristics.

The demo is the README's first command. It

1. trains PPO with the per-client equivariant policy and the packaged ``configs/agents/equivariant-ppo.yml``
   hyperparameters (training envs seeded ``0 .. n_envs-1``; periodic evaluation on seed ``EVAL_SEED_OFFSET``;
   the best model is kept),
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

from qflgym.agents.bench import BenchOutput, BenchSuite, run_suite
from qflgym.agents.training.sb3 import EVAL_SEED_OFFSET, TrainResult, train
from qflgym.config import build_config, preset_path

__all__ = ["DEMO_ENV", "DEMO_EVAL_SEEDS_START", "DEMO_HEURISTICS", "DemoResult", "run_demo"]

#: The env the demo trains and evaluates on.
DEMO_ENV = "QFL/ClientSelection-v1"
#: Evaluation seeds are ``DEMO_EVAL_SEEDS_START + i`` (training uses 0..n_envs-1 and EVAL_SEED_OFFSET).
DEMO_EVAL_SEEDS_START = 20_000
#: The heuristics the trained policy is compared with (label, controller, kwargs).
DEMO_HEURISTICS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("random-k", "random-k", {"k": 1}),
    ("cost-aware", "cost-aware", {"k": 3}),
    ("label-complement", "label-complement", {"k": 3}),
    ("oort", "oort", {"k": 2}),
)
#: Default PPO budget (env steps) of the full demo and of ``--quick``.
DEMO_TIMESTEPS, QUICK_TIMESTEPS = 20_000, 1_024


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
    """Train PPO and benchmark it against the heuristics (see the module docstring).

    Args:
        quick: Tiny budget and two seeds.
        out: Output directory; default ``runs/demo__<time>``.
        timesteps: PPO budget; default 20000 (``quick``: 1024).
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
    timesteps = timesteps or (QUICK_TIMESTEPS if quick else DEMO_TIMESTEPS)
    n_seeds = n_seeds or (2 if quick else 20)
    train_seed = 0
    console.rule(f"[bold]1/2  training PPO on {env_id} for {timesteps} steps")
    overrides: dict[str, Any] = {}
    if quick:
        overrides = {"n_steps": 128, "batch_size": 64, "n_epochs": 2}
    result = train(
        {
            "algo": "ppo",
            "env": env_id,
            "hyperparams": str(preset_path("agents", "equivariant-ppo")),
            "timesteps": timesteps,
            "seed": train_seed,
            "n_envs": n_envs,
            "out": str(out_dir),
            "run_name": "train",
            "overrides": overrides,
            "eval_freq": timesteps if quick else max(timesteps // 4, 1),
            "eval_episodes": 1 if quick else 5,
            "save_freq": 0,
            "progress": progress,
        },
        argv=argv,
    )
    console.print(
        f"trained {result.timesteps} steps in {result.seconds:.0f} s "
        f"({result.steps_per_second:.0f} steps/s) → {result.run_dir}"
    )

    seeds = [DEMO_EVAL_SEEDS_START + i for i in range(n_seeds)]
    used_in_training = {train_seed + i for i in range(n_envs)} | {train_seed + EVAL_SEED_OFFSET}
    assert not used_in_training & set(seeds), "evaluation seeds must differ from training seeds"
    model = result.best_model_path or result.model_path
    sb3_kwargs = {"path": str(model), "algo": "ppo"}
    suite = build_config(
        BenchSuite,
        {
            "name": "demo",
            "description": (
                f"PPO trained for {result.timesteps} steps on {env_id} (seeds "
                f"{sorted(used_in_training)}), evaluated on unseen seeds against selection heuristics."
            ),
            "baseline": "random-k",
            "seeds": seeds,
            "envs": [{"id": env_id}],
            "controllers": [
                # Sampling from the policy keeps the selection diverse; its mode may pick the same clients every
                # round, so both are reported.
                {"name": "ppo", "controller": "sb3", "kwargs": sb3_kwargs, "deterministic": False},
                {"name": "ppo (mode)", "controller": "sb3", "kwargs": sb3_kwargs, "deterministic": True},
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
