"""Choose a sampled LLM ranker's temperature on validation seeds (never the evaluation seeds).

Runs the ``llm`` controller with ``deterministic=False`` at each temperature on the same validation seeds, one
temperature per process, and prints the mean objective (cost to target) and the stalls per temperature; the
lowest mean is the choice. Usage::

    python benchmarks/validate_temperature.py --path runs/results/llm/sft/cs-v1-rank-clone-soft/policy \
        --temperatures 0.25 0.5 1.0 --seeds 600 620 --json benchmarks/results/learned/round10/temperature.json
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from qflgym.runs import write_result_record


def run(env_id: str, path: str, temperature: float, seeds: list[int], quantize: str | None) -> dict[str, Any]:
    """Objectives of the sampled ranker at ``temperature`` on ``seeds`` (one env and controller, seeds in order)."""
    import torch

    from qflgym.agents.controllers import make_controller
    from qflgym.agents.evaluation import evaluate
    from qflgym.agents.runtime import make_env

    torch.set_num_threads(1)
    env = make_env(env_id)
    kwargs = {"path": path, "torch_threads": 1, "temperature": temperature, "quantize": quantize}
    controller = make_controller("llm", env, seed=0, **kwargs)
    rows = evaluate(env, controller, seeds, deterministic=False)
    env.close()
    objectives = [float(r["objective"]) for r in rows]
    stalls = [int(r["seed"]) for r in rows if not r["reached"]]
    return {"temperature": temperature, "mean": float(np.mean(objectives)), "median": float(np.median(objectives)),
            "stalls": stalls, "objectives": objectives}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="QFL/ClientSelection-v1")
    parser.add_argument("--path", required=True, help="a saved ranker (qflgym llm sft ... head: rank)")
    parser.add_argument("--temperatures", type=float, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs=2, metavar=("FIRST", "STOP"), required=True)
    parser.add_argument("--quantize", default="int8", help="inference quantization (none: float32)")
    parser.add_argument("--workers", type=int, default=2, help="processes, one temperature each (1: in this one)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    bad = [t for t in args.temperatures if not (math.isfinite(t) and t > 0)]
    if bad:
        parser.error(f"--temperatures must be finite and > 0, got {bad}")
    seeds = list(range(*args.seeds))
    if not seeds:
        parser.error(f"--seeds FIRST STOP must hold at least one seed, got {args.seeds}")
    quantize = None if args.quantize == "none" else args.quantize
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.workers == 1:
        results = [run(args.env, args.path, t, seeds, quantize) for t in args.temperatures]
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = [pool.submit(run, args.env, args.path, t, seeds, quantize) for t in args.temperatures]
            results = [f.result() for f in futures]
    for r in results:
        print(f"T={r['temperature']:g}: mean {r['mean']:.1f}, median {r['median']:.1f}, "
              f"{len(r['stalls'])} stalls {r['stalls']}, seeds {seeds[0]}-{seeds[-1]}")  # fmt: skip
    best = min(results, key=lambda r: r["mean"])
    print(f"chosen: T={best['temperature']:g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": args.env, "path": args.path, "seeds": seeds, "results": results,
                                         "chosen": best["temperature"]}, indent=2))  # fmt: skip
        write_result_record(args.json, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
