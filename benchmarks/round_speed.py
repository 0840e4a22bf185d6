"""Federated rounds per second: the fused torch backend vs PennyLane (broadcast) vs a per-sample PennyLane loop.

Each preset runs full rounds (every client selected, local training, aggregation, validation and test
evaluation of the global model) through :class:`qflgym.qfl_core.Federation`, changing only the backend.

Usage::

    python benchmarks/round_speed.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from qflgym.qfl_core import Federation, FederationConfig

PRESETS = ("default", "qubits8")
BACKENDS = {
    "torch": {"name": "torch"},
    "pennylane": {"name": "pennylane", "device": "default.qubit", "broadcast": True},
    "loop": {"name": "pennylane", "device": "default.qubit", "broadcast": False},
}


def rounds_per_second(preset: str, backend: dict, min_rounds: int, min_seconds: float, warmup: int) -> float:
    """Time full rounds (all clients) after ``warmup`` rounds; run at least ``min_rounds`` and ``min_seconds``."""
    fed = Federation(FederationConfig.from_preset(preset, {"backend": backend}), seed=0)
    everyone = list(range(fed.n_clients))
    for _ in range(warmup):
        fed.run_round(everyone)
    rounds, start = 0, time.perf_counter()
    while rounds < min_rounds or time.perf_counter() - start < min_seconds:
        fed.run_round(everyone)
        rounds += 1
    return rounds / (time.perf_counter() - start)


def main() -> int:
    """Measure, print a Markdown table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (finishes in under 60 s)")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1: fastest here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    budget = {  # (min_rounds, min_seconds, warm-up rounds) per backend; a loop round takes seconds to minutes
        "torch": (200, 1.0, 5) if args.quick else (2000, 5.0, 20),
        "pennylane": (3, 1.0, 1) if args.quick else (20, 5.0, 2),
        "loop": (1, 0.0, 0) if args.quick else (2, 5.0, 0),
    }
    results: dict[str, dict[str, float | None]] = {}
    for preset in PRESETS:
        speeds: dict[str, float | None] = {}
        for name, backend in BACKENDS.items():
            if args.quick and name == "loop" and preset != PRESETS[0]:
                speeds[name] = None  # about a minute per round: only in the full run
                continue
            speeds[name] = rounds_per_second(preset, backend, *budget[name])
            print(f"{preset:8s} {name:9s} {speeds[name]:10.3f} rounds/s", file=sys.stderr, flush=True)
        torch_speed, loop_speed = speeds["torch"], speeds["loop"]
        results[preset] = {
            "torch_rounds_per_s": torch_speed,
            "pennylane_rounds_per_s": speeds["pennylane"],
            "loop_rounds_per_s": loop_speed,
            "speedup_vs_pennylane": torch_speed / speeds["pennylane"],
            "speedup_vs_loop": None if loop_speed is None else torch_speed / loop_speed,
        }
    print(f"\nround speed ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})\n")
    print(
        "| preset | torch rounds/s | PennyLane broadcast rounds/s | per-sample loop rounds/s "
        "| speedup vs PennyLane | speedup vs loop |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for preset, r in results.items():
        loop = "not run (--quick)" if r["loop_rounds_per_s"] is None else f"{r['loop_rounds_per_s']:.4f}"
        vs_loop = "–" if r["speedup_vs_loop"] is None else f"{r['speedup_vs_loop']:.0f}x"
        print(
            f"| {preset} | {r['torch_rounds_per_s']:.1f} | {r['pennylane_rounds_per_s']:.2f} "
            f"| {loop} | {r['speedup_vs_pennylane']:.1f}x | {vs_loop} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"presets": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
