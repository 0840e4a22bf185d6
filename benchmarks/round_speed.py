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

from qflgym.qfl_core import Federation, FederationConfig

PRESETS = ("default", "qubits8")
BACKENDS = {
    "torch": {"name": "torch"},
    "pennylane": {"name": "pennylane", "device": "default.qubit", "broadcast": True},
    "loop": {"name": "pennylane", "device": "default.qubit", "broadcast": False},
}


def rounds_per_second(preset: str, backend: dict, min_rounds: int, min_seconds: float) -> float:
    """Time full rounds (all clients) after one warm-up round; run at least ``min_rounds`` and ``min_seconds``."""
    fed = Federation(FederationConfig.from_preset(preset, {"backend": backend}), seed=0)
    everyone = list(range(fed.n_clients))
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
    args = parser.parse_args()
    budget = {  # (min_rounds, min_seconds) per backend
        "torch": (200, 1.0) if args.quick else (2000, 5.0),
        "pennylane": (3, 1.0) if args.quick else (20, 5.0),
        "loop": (1, 0.0) if args.quick else (2, 5.0),
    }
    results: dict[str, dict[str, float]] = {}
    for preset in PRESETS:
        speeds = {}
        for name, backend in BACKENDS.items():
            speeds[name] = rounds_per_second(preset, backend, *budget[name])
            print(f"{preset:8s} {name:9s} {speeds[name]:10.3f} rounds/s", file=sys.stderr, flush=True)
        results[preset] = {
            "torch_rounds_per_s": speeds["torch"],
            "pennylane_rounds_per_s": speeds["pennylane"],
            "loop_rounds_per_s": speeds["loop"],
            "speedup_vs_pennylane": speeds["torch"] / speeds["pennylane"],
            "speedup_vs_loop": speeds["torch"] / speeds["loop"],
        }
    print(f"\nround speed ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})\n")
    print(
        "| preset | torch rounds/s | PennyLane broadcast rounds/s | per-sample loop rounds/s "
        "| speedup vs PennyLane | speedup vs loop |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for preset, r in results.items():
        print(
            f"| {preset} | {r['torch_rounds_per_s']:.1f} | {r['pennylane_rounds_per_s']:.2f} "
            f"| {r['loop_rounds_per_s']:.4f} | {r['speedup_vs_pennylane']:.1f}x | {r['speedup_vs_loop']:.0f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps({"presets": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
