"""The equivariant policy against SB3's MlpPolicy: PPO training speed, and which pooling learns best.

``speed``: PPO env steps/s of ``qflgym train`` (the packaged ``configs/agents/ppo.yml`` hyperparameters, no
evaluation, checkpoints or logs) with ``MlpPolicy`` and with ``EquivariantPolicy`` (each pooling asked for),
interleaved ``--repeats`` times in one process; the median of each and its ratio to ``MlpPolicy``, per
wall-clock second and per CPU second.

``pooling``: PPO for the same budget per policy and training seed, then every trained policy and the
``random-k`` heuristic on the same ``--eval-episodes`` evaluation seeds, with deterministic (``_deter``) and
sampled (``_stoch``) actions; the mean return, the fraction of episodes that reach the target and the median
rounds to it, averaged over the training seeds (± their standard deviation).

    python benchmarks/equivariant_policy.py speed --steps 4096
    python benchmarks/equivariant_policy.py pooling --steps 16384 --seeds 0 1 2 --jobs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import gymnasium as gym
import numpy as np

import qflgym.envs  # noqa: F401
from qflgym.agents.controllers import make_controller
from qflgym.agents.controllers.sb3 import SB3Controller
from qflgym.agents.evaluation import evaluate
from qflgym.agents.training.sb3 import train

ENV_ID = "QFL/ClientSelection-v0"
EVAL_SEED_BASE = 50_000
POLICIES = ("mlp", "mean", "max", "mean_max", "attention")


def _overrides(policy: str) -> dict[str, Any]:
    if policy == "mlp":
        return {}
    return {"policy": "EquivariantPolicy", "policy_kwargs": f"dict(pooling='{policy}')"}


def _train(env_id: str, policy: str, seed: int, steps: int, out: str) -> Any:
    return train(
        {
            "algo": "ppo",
            "env": env_id,
            "timesteps": steps,
            "seed": seed,
            "out": out,
            "run_name": f"{policy}-s{seed}",
            "overrides": _overrides(policy),
            "eval_freq": 0,
            "save_freq": 0,
            "progress": False,
            "tensorboard": False,
        },
        argv=["benchmarks/equivariant_policy.py"],
    )


def speed(env_id: str, policies: list[str], steps: int, repeats: int) -> dict[str, Any]:
    """Median PPO steps/s of each policy over ``repeats`` interleaved runs, and the ratio to ``mlp``.

    Both per wall-clock second and per CPU second of this process (one thread): the latter does not depend on
    what else the machine runs.
    """
    runs: dict[str, dict[str, list[float]]] = {p: {"wall": [], "cpu": []} for p in policies}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for policy in policies:
                cpu = time.process_time()
                result = _train(env_id, policy, 0, steps, tmp)
                runs[policy]["cpu"].append(result.timesteps / (time.process_time() - cpu))
                runs[policy]["wall"].append(result.steps_per_second)
    out: dict[str, Any] = {}
    for clock in ("wall", "cpu"):
        medians = {p: statistics.median(v[clock]) for p, v in runs.items()}
        base = medians.get("mlp", math.nan)
        out[f"steps_per_{clock}_s"] = {
            p: {
                "runs": [round(x, 1) for x in runs[p][clock]],
                "median": round(m, 1),
                "ratio_to_mlp": round(m / base, 3),
            }
            for p, m in medians.items()
        }
    return out


def _episode_summary(rows: list[dict[str, float]]) -> dict[str, float]:
    rounds = [r["rounds_to_target"] for r in rows if r["reached"]]
    return {
        "return": float(np.mean([r["return"] for r in rows])),
        "reached": float(np.mean([r["reached"] for r in rows])),
        "median_rounds_to_target": float(np.median(rounds)) if rounds else math.nan,
    }


def _train_and_evaluate(env_id: str, policy: str, seed: int, steps: int, eval_seeds: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = _train(env_id, policy, seed, steps, tmp)
        controller = SB3Controller.load(result.run_dir)
        env = gym.make(env_id)
        summaries = {
            mode: _episode_summary(evaluate(env, controller, eval_seeds, deterministic=mode == "deterministic"))
            for mode in ("deterministic", "stochastic")
        }
    flat = {f"{key}_{mode[:5]}": value for mode, summary in summaries.items() for key, value in summary.items()}
    return {"policy": policy, "seed": seed, "seconds": round(result.seconds, 1), **flat}


def pooling(env_id: str, policies: list[str], seeds: list[int], steps: int, episodes: int, jobs: int) -> dict:
    """Train every (policy, seed) for ``steps``, evaluate on shared seeds, aggregate over training seeds."""
    eval_seeds = [EVAL_SEED_BASE + i for i in range(episodes)]
    tasks = [(env_id, p, s, steps, eval_seeds) for s in seeds for p in policies]
    runs = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for future in as_completed([pool.submit(_train_and_evaluate, *task) for task in tasks]):
            runs.append(future.result())
            print(json.dumps(runs[-1]), flush=True)  # progress: one line per finished run
    env = gym.make(env_id)
    baseline = _episode_summary(evaluate(env, make_controller("random-k", env, seed=0), eval_seeds))
    table = {}
    for policy in policies:
        mine = [r for r in runs if r["policy"] == policy]
        table[policy] = {
            key: {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4)}
            for key in mine[0]
            if key not in ("policy", "seed")
            for v in [[r[key] for r in mine]]
        }
    return {"random-k": baseline, "policies": table, "runs": runs, "eval_seeds": [eval_seeds[0], eval_seeds[-1]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("speed", "pooling"))
    parser.add_argument("--env", default=ENV_ID, help=f"env id (default {ENV_ID})")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--steps", type=int, default=4096, help="PPO steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="speed: interleaved runs per policy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="pooling: training seeds")
    parser.add_argument("--eval-episodes", type=int, default=20, help="pooling: evaluation episodes per policy")
    parser.add_argument("--jobs", type=int, default=1, help="pooling: runs in parallel (one process each)")
    parser.add_argument("--json", dest="json_path", help="write the results as JSON to this path")
    args = parser.parse_args()
    if args.what == "speed":
        out = speed(args.env, args.policies, args.steps, args.repeats)
    else:
        out = pooling(args.env, args.policies, args.seeds, args.steps, args.eval_episodes, args.jobs)
    out = {"env": args.env, "steps": args.steps, args.what: out}
    print(json.dumps(out, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
