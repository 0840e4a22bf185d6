"""PPO training throughput on the default ClientSelection preset (env steps per second of ``learn``).

Runs ``qflgym.agents.training.sb3.train`` -- the code behind ``qflgym train`` -- with the packaged
``configs/agents/ppo.yml`` hyperparameters for a fixed number of steps, with 1 and 2 vectorized envs (the
2-env case both in-process and with one subprocess per env), no periodic evaluation, checkpoints, TensorBoard
or progress bar, and reports steps/s and the projected time of 100k steps (target: <= 300 s). The raw env
speed under random actions is printed for reference.

    python benchmarks/train_speed.py                 # 8192 steps per configuration
    python benchmarks/train_speed.py --quick         # 2048 steps, under a minute
    python benchmarks/train_speed.py --json speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import gymnasium as gym

import qflgym.envs  # noqa: F401
from qflgym.agents.runtime import limited_threads
from qflgym.agents.training.sb3 import train

ENV_ID = "QFL/ClientSelection-v0"
TARGET_STEPS, TARGET_SECONDS = 100_000, 300.0


def env_steps_per_second(env_id: str, steps: int, threads: int | None) -> float:
    """Env steps/s under uniformly random actions (resets included), with ``threads`` torch/BLAS threads."""
    with limited_threads(threads):
        return _env_steps_per_second(env_id, steps)


def _env_steps_per_second(env_id: str, steps: int) -> float:
    env = gym.make(env_id)
    env.action_space.seed(0)
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def ppo_steps_per_second(
    env_id: str, steps: int, n_envs: int, vec_env: str, torch_threads: int | None, overrides: dict | None = None
) -> dict:
    """Train PPO for ``steps`` env steps and return its throughput."""
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            {
                "algo": "ppo",
                "env": env_id,
                "timesteps": steps,
                "n_envs": n_envs,
                "vec_env": vec_env,
                "seed": 0,
                "out": tmp,
                "eval_freq": 0,
                "save_freq": 0,
                "progress": False,
                "tensorboard": False,
                "torch_threads": torch_threads,
                "overrides": overrides or {},
            },
            argv=["benchmarks/train_speed.py"],
        )
    sps = result.steps_per_second
    return {
        "n_envs": n_envs,
        "vec_env": vec_env,
        "timesteps": result.timesteps,
        "seconds": round(result.seconds, 2),
        "steps_per_s": round(sps, 1),
        "projected_100k_s": round(TARGET_STEPS / sps, 1),
        "meets_target": TARGET_STEPS / sps <= TARGET_SECONDS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default=ENV_ID, help=f"env id (default {ENV_ID})")
    parser.add_argument("--steps", type=int, help="PPO steps per configuration (default 8192; --quick 2048)")
    parser.add_argument("--quick", action="store_true", help="2048 steps per configuration")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch/BLAS threads per process (default 1)")
    parser.add_argument("--json", dest="json_path", help="write the results as JSON to this path")
    parser.add_argument(
        "--batched",
        type=int,
        nargs="*",
        default=[],
        help="also B batched envs (--vec-env batched; n_steps scaled to keep 1024 steps per rollout)",
    )
    args = parser.parse_args()
    steps = args.steps or (2048 if args.quick else 8192)

    raw = env_steps_per_second(args.env, min(steps, 2000), args.torch_threads)
    print(f"{args.env}: raw env {raw:.0f} steps/s (random actions)")
    rows = []
    configs = [(1, "dummy"), (2, "dummy"), (2, "subproc")] + [(b, "batched") for b in args.batched]
    for n_envs, vec_env in configs:
        overrides = {"n_steps": max(8, 1024 // n_envs), "batch_size": 128} if vec_env == "batched" else None
        row = ppo_steps_per_second(args.env, steps, n_envs, vec_env, args.torch_threads, overrides)
        rows.append(row)
        verdict = "meets" if row["meets_target"] else "MISSES"
        print(
            f"PPO n_envs={n_envs} ({vec_env:7s}): {row['steps_per_s']:7.1f} steps/s -> 100k steps in "
            f"{row['projected_100k_s']:6.1f} s ({verdict} the {TARGET_SECONDS:.0f} s target)"
        )
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump({"env": args.env, "raw_env_steps_per_s": round(raw, 1), "ppo": rows}, fh, indent=2)
        print(f"wrote {args.json_path}")


if __name__ == "__main__":
    main()
