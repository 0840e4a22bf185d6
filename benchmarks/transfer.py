r"""Does a trained equivariant policy keep its saving on federations it was not trained on?

The policy (a model ``.zip`` or a ``qflgym train`` run directory) was trained on ``--source``; it is evaluated
**unchanged** (the same weights, rebuilt for each env's number of clients by the ``sb3`` controller) on the
source and on every ``--targets`` preset. Each preset is measured as ``benchmarks/headroom.py`` measures: random-k
with its k tuned on training seeds 0..n-1 is the reference; the teacher heuristic (``--teacher``, fixed
settings) and the policy run on the evaluation seeds 10000..; every saving is paired by seed with its bootstrap
95% CI. The policy's *kept share* on a target is its saving there over its saving on the source.

    OMP_NUM_THREADS=1 python benchmarks/transfer.py runs/results/ppo/cs-v1-clone \\
        --targets QFL/ClientSelection-Large-v1 QFL/ClientSelection-Hard-v1 QFL/ClientSelection-Text-v1 \\
        --json benchmarks/results/transfer/clone.json
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from headroom import _pct, measure_and_save

from qflgym.config import parse_yaml

#: The reference grid: random-k's k (capped by each env's selection budget).
NAIVE_K = (1, 2, 3, 4, 6, 8, 12)

POLICY_LABEL = "equivariant policy (unchanged)"


def suite_for(env_ids: list[str], model: str, teacher: str, teacher_kwargs: dict) -> dict:
    """A :func:`headroom.measure` suite: tuned random-k, the teacher and the policy on every env."""
    import gymnasium as gym

    import qflgym.envs  # noqa: F401

    suite = {}
    for env_id in env_ids:
        budget = gym.make(env_id).unwrapped.config.selection_budget
        ks = [k for k in NAIVE_K if k <= budget]
        suite[env_id] = {
            "naive": ("random-k (tuned k)", "random-k", {"k": ks}),
            "informed": [
                (f"{teacher} (teacher)", teacher, {k: [v] for k, v in teacher_kwargs.items()}),
                (POLICY_LABEL, "sb3", {"path": [model], "algo": ["ppo"]}),
            ],
            "oracle": None,
        }
    return suite


def kept_shares(result: dict, source: str) -> dict[str, float]:
    """The policy's saving on each preset over its saving on ``source`` (NaN when the source saving is <= 0)."""
    base = result["presets"][source]["controllers"][POLICY_LABEL]["saving_vs_reference"]
    return {
        env_id: (p["controllers"][POLICY_LABEL]["saving_vs_reference"] / base if base > 0 else math.nan)
        for env_id, p in result["presets"].items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a model .zip or a qflgym train run directory (PPO, equivariant policy)")
    parser.add_argument("--source", default="QFL/ClientSelection-v1", help="the env the policy was trained on")
    parser.add_argument("--targets", nargs="+", required=True, help="env ids to evaluate it on unchanged")
    parser.add_argument("--teacher", default="cost-aware")
    parser.add_argument("--teacher-kwargs", default="{k: 3}", help="inline YAML")
    parser.add_argument("--train-seeds", type=int, default=10, help="tuning seeds of random-k's k: 0..n-1")
    parser.add_argument("--eval-seeds", type=int, default=50, help="evaluation seeds 10000..10000+n-1")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    env_ids = [args.source, *[t for t in args.targets if t != args.source]]
    suite = suite_for(env_ids, str(Path(args.model).resolve()), args.teacher, parse_yaml(args.teacher_kwargs))

    def report(result: dict) -> None:
        result["kept_share"] = kept_shares(result, args.source)
        for env_id, share in result["kept_share"].items():
            saving = result["presets"][env_id]["controllers"][POLICY_LABEL]["saving_vs_reference"]
            shown = "n/a" if not math.isfinite(share) else f"{100 * share:.0f}%"
            print(f"{env_id}: policy saving {_pct(saving)}, kept share of the source saving {shown}")

    measure_and_save(suite, args.train_seeds, args.eval_seeds, args, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
