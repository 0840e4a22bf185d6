r"""The hindsight bound on stopping: how much any stopping rule can save against the best fixed stopping round.

On an env whose only decision is when to stop (``QFL/RoundTermination-*``), the trajectory up to round ``t`` does
not depend on when the episode stops (the clients follow the env's own rule, drawn from its seed), so one run to the
round budget gives, per seed, the objective of stopping after every round ``t`` (``info["objective"]`` is the value
the episode would have if it ended now). From that:

* the **best fixed round**: the ``t`` with the lowest mean objective over the *training* seeds (the tuned naive
  baseline of ``benchmarks/headroom.py``, tuned over every round instead of a grid);
* the **prophet**: per evaluation seed the lowest objective over all ``t`` -- what a rule that knew the future
  would pay. No stopping rule, privileged or not, can beat it, so its saving against the best fixed round,
  paired by seed, bounds the saving of every controller on this preset.

    python benchmarks/stopping_bound.py --env QFL/RoundTermination-v1 \\
        --json benchmarks/results/headroom/stopping_bound/stopping_bound.json
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def objective_curve(task: tuple[str, dict, int]) -> list[float]:
    """``info["objective"]`` after every round of one episode that never stops (to the round budget)."""
    import gymnasium as gym

    import qflgym.envs  # noqa: F401
    from qflgym.agents.controllers import make_controller

    env_id, config, seed = task
    env = gym.make(env_id, config=config)
    controller = make_controller("composite", env, seed=seed, termination="never")
    obs, info = env.reset(seed=seed)
    curve = []
    done = False
    while not done:
        action, _ = controller.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        curve.append(float(info["objective"]))
        done = terminated or truncated
    env.close()
    return curve


def curves(env_id: str, config: dict, seeds: list[int], workers: int) -> np.ndarray:
    """``[seeds, rounds]`` objective curves of the episodes that never stop.

    An episode the env ended early (a target, a cost budget) keeps its final value for the later rounds (stopping
    after its end is stopping at its end).
    """
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(objective_curve, [(env_id, config, s) for s in seeds]))
    length = max(len(r) for r in rows)
    return np.array([r + [r[-1]] * (length - len(r)) for r in rows])


def main(argv: list[str] | None = None) -> int:
    from qflgym.agents.evaluation.paired import paired_comparison
    from qflgym.config import parse_yaml
    from qflgym.runs import write_result_record

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="QFL/RoundTermination-v1")
    parser.add_argument(
        "--env-config", default="{}", help="env config overrides (inline YAML), e.g. '{cost_weight: 0.01}'"
    )
    parser.add_argument("--train-seeds", type=int, default=10, help="tuning seeds 0..n-1")
    parser.add_argument("--eval-seeds", type=int, default=50, help="evaluation seeds 10000..10000+n-1")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    config = parse_yaml(args.env_config)
    train = curves(args.env, config, list(range(args.train_seeds)), args.workers)
    eval_seeds = list(range(10_000, 10_000 + args.eval_seeds))
    test = curves(args.env, config, eval_seeds, args.workers)
    best_round = int(np.argmin(train.mean(axis=0)))  # stop after round best_round + 1
    fixed, prophet = test[:, best_round], test.min(axis=1)
    cmp = paired_comparison(fixed, prophet)
    hindsight_rounds = test.argmin(axis=1) + 1
    print(
        f"{args.env} {config or ''}: best fixed stopping round (training seeds 0-{args.train_seeds - 1}): "
        f"{best_round + 1}"
    )
    print(f"  fixed round, {len(eval_seeds)} evaluation seeds: mean objective {fixed.mean():.4f}")
    print(f"  prophet (best round per seed, in hindsight): mean {prophet.mean():.4f}")
    print(
        f"  prophet saving vs the fixed round: {cmp.saving.value:+.1%} [{cmp.saving.low:+.1%}, {cmp.saving.high:+.1%}]"
        f" -- no stopping rule can save more on this preset"
    )
    q = np.percentile(hindsight_rounds, [10, 50, 90])
    print(f"  hindsight-best round per seed: 10/50/90th percentile {q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_result_record(args.json, args)
        args.json.write_text(
            json.dumps(
                {
                    "env": args.env,
                    "env_config": config,
                    "best_fixed_round": best_round + 1,
                    "fixed_mean": float(fixed.mean()),
                    "prophet_mean": float(prophet.mean()),
                    "prophet_saving": [cmp.saving.value, cmp.saving.low, cmp.saving.high],
                    "hindsight_rounds": hindsight_rounds.tolist(),
                    "eval_seeds": eval_seeds,
                    "fixed_per_seed": fixed.tolist(),
                    "prophet_per_seed": prophet.tolist(),
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
