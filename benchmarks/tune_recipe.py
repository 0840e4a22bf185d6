r"""Optuna search over a packaged training recipe of a v1 env, every trial scored on validation seeds.

Two recipes can be searched, the way rl-zoo's ``--optimize`` searches them (Optuna, TPE sampler seeded with
``--seed``; ``--timeout`` bounds the wall time). The packaged recipe is enqueued as trial 0, so the search is
measured against it in the same run.

* ``clone``: the behaviour-cloning recipe of ``QFL/ClientSelection-v1``. Each trial clones the packaged teacher
  (``configs/agents/pretrain-cost-aware.yml``) into the equivariant policy (``configs/agents/equivariant-clone.yml``,
  ``timesteps 0``) with the settings it draws: lr, epochs, DAgger rounds and their refit passes, batch size.
* ``ppo``: PPO from scratch with the env's entry of ``configs/agents/equivariant-ppo.yml``. Each trial trains
  ``--timesteps`` steps on ``--n-envs`` batched envs with the PPO settings it draws (rl-zoo's PPO sampler,
  trimmed to the ranges that fit these short episodes): lr, steps per rollout, minibatch size, epochs, gamma,
  GAE lambda, clip range, entropy coefficient. Trial 0 is the packaged recipe with ``n_steps`` scaled so that
  a rollout holds as many steps as the packaged one's.

Every trial's policy then runs deterministically on the validation seeds (default 60000-60099: none is a
training (0..), demonstration (20000..), periodic-evaluation (50000..) or evaluation (10000-10049) seed) and is
scored by their mean objective (``info["objective"]``, lower is better), the quantity the benchmark compares.

    python benchmarks/tune_recipe.py clone --trials 12 --timeout 2700 \
        --json benchmarks/results/learned/round4/tune_clone.json
    python benchmarks/tune_recipe.py ppo --env QFL/FullControl-v1 --timesteps 30000 --n-envs 8 --trials 12 \
        --timeout 3600 --json benchmarks/results/learned/round5/tune_ppo_fullcontrol.json

The JSON holds every trial (its drawn settings, the full recipe, the validation mean, median and censored
count, the training seconds) and the best recipe; the run record (command, config, versions) is written beside.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from qflgym.runs import write_result_record

CLONE_ENV = "QFL/ClientSelection-v1"


@dataclass(frozen=True)
class SearchSpace:
    """What a trial draws: the learning rate log-uniform over ``lr``, and one of ``choices[key]`` for each key."""

    lr: tuple[float, float]
    choices: dict[str, list[Any]]

    @property
    def keys(self) -> tuple[str, ...]:
        """The searched keys (the rest of a recipe stays the packaged one)."""
        return ("learning_rate", *self.choices)


CLONE_SPACE = SearchSpace(
    lr=(1e-3, 1e-2),
    choices={
        "epochs": [30, 60, 90],
        "dagger_iterations": [4, 8],
        "dagger_episodes": [15, 30],
        "dagger_epochs": [5, 10, 20],
        "batch_size": [128, 256, 512],
    },
)
"""The cloning settings searched."""

PPO_SPACE = SearchSpace(
    lr=(1e-4, 3e-3),
    choices={
        "n_steps": [32, 64, 128],
        "batch_size": [64, 128, 256],
        "n_epochs": [5, 10, 20],
        "gamma": [0.95, 0.98, 0.99, 0.995],
        "gae_lambda": [0.9, 0.95, 0.98],
        "clip_range": [0.1, 0.2, 0.3],
        "ent_coef": [0.0, 0.001, 0.01, 0.03],
    },
)
"""The PPO settings searched (rl-zoo's sampler, trimmed to these short episodes)."""

PPO_DEFAULTS = {"ent_coef": 0.0, "gae_lambda": 0.95, "clip_range": 0.2}
"""SB3 PPO's defaults of the searched keys a zoo entry may leave out."""


def suggest(trial: Any, space: SearchSpace, packaged: dict[str, Any]) -> dict[str, Any]:
    """The settings a trial draws from ``space``, widened to hold the ``packaged`` values.

    Widening keeps trial 0 (the packaged recipe) inside the space searched.

    Raises:
        ValueError: If the packaged learning rate is a schedule (a search needs a constant to start from).
    """
    if not isinstance(packaged["learning_rate"], int | float):
        raise ValueError(f"learning_rate: the packaged recipe must be a number, got {packaged['learning_rate']!r}")
    lr = float(packaged["learning_rate"])
    low, high = space.lr
    drawn = {"learning_rate": trial.suggest_float("learning_rate", min(low, lr), max(high, lr), log=True)}
    for key, choices in space.choices.items():
        drawn[key] = trial.suggest_categorical(key, sorted(set(choices) | {packaged[key]}))
    return drawn


def validate(env_id: str, model_path: Path, seeds: list[int]) -> tuple[np.ndarray, int]:
    """A trained policy's objective on each validation seed (deterministic actions), and the censored count.

    An episode is censored when it ends by the round budget (truncated), not by the task.
    """
    import gymnasium as gym

    import qflgym.envs  # noqa: F401
    from qflgym.agents.controllers import make_controller
    from qflgym.agents.evaluation.episodes import run_episode

    env = gym.make(env_id)
    controller = make_controller("sb3", env, seed=0, path=str(model_path), algo="ppo")
    episodes = [run_episode(env, controller, seed=s, deterministic=True) for s in seeds]
    return np.array([e.objective for e in episodes]), sum(e.truncated for e in episodes)


TrialRun = Callable[[Any, str], tuple[dict[str, Any], Path, float]]
"""Train one trial's policy under a folder: its recipe, its model's path and its training seconds."""


def clone_trial(args: argparse.Namespace) -> tuple[str, dict[str, Any], TrialRun]:
    """The clone recipe: its env, its packaged settings and how one trial trains."""
    from qflgym.agents.training.sb3 import train
    from qflgym.config import preset_path

    packaged = yaml.safe_load(preset_path("agents", "pretrain-cost-aware").read_text())

    def run(trial: Any, out: str) -> tuple[dict[str, Any], Path, float]:
        recipe = packaged | suggest(trial, CLONE_SPACE, packaged)
        result = train(_train_config(CLONE_ENV, "equivariant-clone", args, out, trial, timesteps=0, pretrain=recipe))
        return recipe, result.run_dir / "pretrained_model.zip", result.pretrained.seconds

    return CLONE_ENV, {key: packaged[key] for key in CLONE_SPACE.keys}, run


def ppo_trial(args: argparse.Namespace) -> tuple[str, dict[str, Any], TrialRun]:
    """The PPO recipe of ``args.env``: its env, its packaged settings (rollout size kept) and one trial's run."""
    from qflgym.agents.training.sb3 import train
    from qflgym.config import preset_path

    entry = yaml.load(preset_path("agents", "equivariant-ppo").read_text(), Loader=yaml.SafeLoader)[args.env]
    packaged = PPO_DEFAULTS | {key: entry[key] for key in PPO_SPACE.keys if key in entry}
    packaged["n_steps"] = entry["n_steps"] * entry["n_envs"] // args.n_envs

    def run(trial: Any, out: str) -> tuple[dict[str, Any], Path, float]:
        recipe = suggest(trial, PPO_SPACE, packaged)
        result = train(
            _train_config(args.env, "equivariant-ppo", args, out, trial, timesteps=args.timesteps, overrides=recipe)
        )
        return recipe, result.model_path, result.seconds

    return args.env, packaged, run


def _train_config(env: str, hyperparams: str, args: argparse.Namespace, out: str, trial: Any, **fields: Any) -> dict:
    from qflgym.config import preset_path

    return {
        "algo": "ppo",
        "env": env,
        "hyperparams": str(preset_path("agents", hyperparams)),
        "seed": args.train_seed,
        "n_envs": getattr(args, "n_envs", None),
        "vec_env": "batched" if getattr(args, "n_envs", None) else "dummy",
        "out": out,
        "run_name": f"trial{trial.number}",
        "eval_freq": 0,
        "save_freq": 0,
        "progress": False,
        "tensorboard": False,
    } | fields


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="recipe", required=True)
    sub.add_parser("clone", help="the behaviour-cloning recipe of ClientSelection-v1")
    ppo = sub.add_parser("ppo", help="PPO from scratch with the equivariant policy")
    ppo.add_argument("--env", required=True, help="a v1 id with an entry in configs/agents/equivariant-ppo.yml")
    ppo.add_argument("--timesteps", type=int, default=30_000, help="env steps of every trial")
    ppo.add_argument("--n-envs", type=int, default=8, help="batched training envs of every trial")
    for p in sub.choices.values():
        p.add_argument("--trials", type=int, default=12, help="trials, the packaged recipe first")
        p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
        p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler")
        p.add_argument("--train-seed", type=int, default=0, help="training seed of every trial")
        p.add_argument("--validation-start", type=int, default=60_000)
        p.add_argument("--validation-seeds", type=int, default=100)
        p.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.trials < 1 or args.validation_seeds < 1:
        parser.error("--trials and --validation-seeds must be >= 1")
    if args.recipe == "ppo" and (args.timesteps < 1 or args.n_envs < 1):
        parser.error("--timesteps and --n-envs must be >= 1")

    import optuna

    env_id, packaged, run = (clone_trial if args.recipe == "clone" else ppo_trial)(args)
    seeds = list(range(args.validation_start, args.validation_start + args.validation_seeds))
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            recipe, model_path, seconds = run(trial, tmp)
            values, censored = validate(env_id, model_path, seeds)
        row = {
            "number": trial.number,
            "params": trial.params,
            "recipe": recipe,
            "mean": float(values.mean()),
            "median": float(np.median(values)),
            "censored": censored,
            "train_seconds": seconds,
            "per_seed": values.round(4).tolist(),
        }
        rows.append(row)
        _write(args.json, env_id, rows, seeds, time.perf_counter() - start)
        return row["mean"]

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.enqueue_trial(packaged)
    study.optimize(objective, n_trials=args.trials, timeout=args.timeout, show_progress_bar=True)
    _write(args.json, env_id, rows, seeds, time.perf_counter() - start)
    write_result_record(args.json, args)
    for row in sorted(rows, key=lambda r: r["mean"]):
        print(
            f"trial {row['number']:2d}: mean {row['mean']:8.4f}  median {row['median']:8.4f}  censored "
            f"{row['censored']}  trained in {row['train_seconds']:4.0f} s  {row['params']}"
        )
    return 0


def _write(path: Path, env_id: str, rows: list[dict[str, Any]], seeds: list[int], seconds: float) -> None:
    best = min(rows, key=lambda r: r["mean"]) if rows else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"env": env_id, "validation_seeds": seeds, "trials": rows, "best": best, "wall_time_s": seconds}, indent=1
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
