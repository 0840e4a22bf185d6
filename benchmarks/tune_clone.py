r"""Optuna search over the behaviour-cloning recipe of ``QFL/ClientSelection-v1``, scored on validation seeds.

Each trial clones the packaged teacher (``configs/agents/pretrain-cost-aware.yml``) into the equivariant policy
(``configs/agents/equivariant-clone.yml``, ``timesteps 0``) with the recipe settings the trial draws (lr, epochs,
DAgger rounds and their refit passes, batch size), then runs the cloned policy deterministically on the
validation seeds (default 60000-60099: none is a training, demonstration (20000..), periodic-evaluation (50000..)
or evaluation (10000-10049) seed) and scores their mean objective, the cost to target that the benchmark
compares. The packaged recipe is enqueued as trial 0, so the search is measured against it in the same run.
TPE sampler seeded with ``--seed`` (as rl-zoo's ``--optimize``); ``--timeout`` bounds the wall time.

    python benchmarks/tune_clone.py --trials 12 --timeout 2400 --json benchmarks/results/learned/round4/tune_clone.json

The JSON holds every trial (its drawn settings, the full recipe, the validation mean, median and censored
count, the training seconds) and the best recipe; the run record (command, config, versions) is written beside.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from qflgym.runs import write_result_record

ENV = "QFL/ClientSelection-v1"


def suggest(trial: Any) -> dict[str, Any]:
    """The recipe settings a trial draws (the rest of the packaged recipe stays)."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
        "epochs": trial.suggest_categorical("epochs", [30, 60, 90]),
        "dagger_iterations": trial.suggest_categorical("dagger_iterations", [4, 8]),
        "dagger_episodes": trial.suggest_categorical("dagger_episodes", [15, 30]),
        "dagger_epochs": trial.suggest_categorical("dagger_epochs", [5, 10, 20]),
        "batch_size": trial.suggest_categorical("batch_size", [128, 256, 512]),
    }


def validate(model_path: Path, seeds: list[int]) -> tuple[np.ndarray, int]:
    """The cloned policy's objective on each validation seed (deterministic actions), and the censored count.

    An episode is censored when it never reaches the target: its objective is then the env's cost budget.
    """
    import gymnasium as gym

    import qflgym.envs  # noqa: F401
    from qflgym.agents.controllers import make_controller
    from qflgym.agents.evaluation.episodes import run_episode

    env = gym.make(ENV)
    controller = make_controller("sb3", env, seed=0, path=str(model_path), algo="ppo")
    values = np.array([run_episode(env, controller, seed=s, deterministic=True).objective for s in seeds])
    return values, int((values >= env.unwrapped.config.cost_budget).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="trials, the packaged recipe first")
    parser.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
    parser.add_argument("--train-seed", type=int, default=0, help="training seed of every trial's clone")
    parser.add_argument("--validation-start", type=int, default=60_000)
    parser.add_argument("--validation-seeds", type=int, default=100)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.trials < 1 or args.validation_seeds < 1:
        parser.error("--trials and --validation-seeds must be >= 1")

    import optuna

    from qflgym.agents.training.sb3 import train
    from qflgym.config import preset_path

    packaged = yaml.safe_load(preset_path("agents", "pretrain-cost-aware").read_text())
    seeds = list(range(args.validation_start, args.validation_start + args.validation_seeds))
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        recipe = packaged | suggest(trial)
        with tempfile.TemporaryDirectory() as tmp:
            result = train(
                {
                    "algo": "ppo",
                    "env": ENV,
                    "hyperparams": str(preset_path("agents", "equivariant-clone")),
                    "timesteps": 0,
                    "pretrain": recipe,
                    "seed": args.train_seed,
                    "out": tmp,
                    "run_name": f"trial{trial.number}",
                    "eval_freq": 0,
                    "save_freq": 0,
                    "progress": False,
                    "tensorboard": False,
                },
                argv=[],
            )
            values, censored = validate(result.run_dir / "pretrained_model.zip", seeds)
        row = {
            "number": trial.number,
            "params": trial.params,
            "pretrain": recipe,
            "mean": float(values.mean()),
            "median": float(np.median(values)),
            "censored": censored,
            "train_seconds": result.pretrained.seconds,
            "per_seed": values.round(2).tolist(),
        }
        rows.append(row)
        _write(args.json, rows, seeds, time.perf_counter() - start)
        return row["mean"]

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.enqueue_trial({key: packaged[key] for key in suggest(optuna.trial.FixedTrial(packaged))})
    study.optimize(objective, n_trials=args.trials, timeout=args.timeout, show_progress_bar=True)
    _write(args.json, rows, seeds, time.perf_counter() - start)
    write_result_record(args.json, args)
    for row in sorted(rows, key=lambda r: r["mean"]):
        print(
            f"trial {row['number']:2d}: mean {row['mean']:7.1f}  median {row['median']:6.1f}  censored "
            f"{row['censored']}  cloned in {row['train_seconds']:4.0f} s  {row['params']}"
        )
    return 0


def _write(path: Path, rows: list[dict[str, Any]], seeds: list[int], seconds: float) -> None:
    best = min(rows, key=lambda r: r["mean"]) if rows else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"env": ENV, "validation_seeds": seeds, "trials": rows, "best": best, "wall_time_s": seconds}, indent=1
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
