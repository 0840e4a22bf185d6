"""Simulator speed: the per-round kernel against the strongest peer simulators, and full federated rounds.

1. **Kernel** (the workload of :mod:`kernel_peers`: 8 clients x 32 samples, 2 layers, float64, forward + backward
   of readout + cross-entropy). qflgym's fused kernel, qflgym through autograd, and every installed peer
   (PennyLane + JAX jit and tensorcircuit-ng + JAX jit come with ``pip install "qflgym[bench]"``) are first
   checked to agree with qflgym, then timed interleaved in one run (the fastest of several repetitions each,
   as ``timeit`` does on a shared machine). At the largest size the first call's time and the peak RSS of one
   call are measured in a fresh process.
2. **Rounds** (``--rounds``): full rounds of the ``default`` and ``qubits8`` presets through
   :class:`qflgym.qfl_core.Federation` with the torch backend vs PennyLane broadcast vs a per-sample loop.

JAX uses more than one core whatever its flags: run ``taskset -c 0 python benchmarks/round_speed.py`` for
single-core figures.

Usage::

    python benchmarks/round_speed.py [--quick] [--qubits 4 8 12] [--rounds] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_peers import PEERS, Workload, available_peers, check, qflgym_step

from qflgym.qfl_core import Federation, FederationConfig

PRESETS = ("default", "qubits8")
BACKENDS = {
    "torch": {"name": "torch"},
    "pennylane": {"name": "pennylane", "device": "default.qubit", "broadcast": True},
    "loop": {"name": "pennylane", "device": "default.qubit", "broadcast": False},
}
#: Peers skipped above this qubit count (seconds per call).
PEER_MAX_QUBITS = {"pennylane-torch": 8}


def best_ms(step: Callable, params: object, calls: int) -> float:
    """Milliseconds per call of ``calls`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        step(params)
    return 1e3 * (time.perf_counter() - start) / calls


def kernel_table(qubits: list[int], peers: list[str], seconds: float, repeats: int) -> dict[str, dict]:
    """Interleaved timings of every implementation at every size: ``{q: {name: ms}}`` plus checks."""
    results: dict[str, dict] = {}
    for q in qubits:
        work = Workload(q)
        params, _, _ = work.data()
        reference = qflgym_step(work, fused=False)
        steps = {"qflgym": qflgym_step(work), "qflgym-autograd": reference}
        for name in peers:
            if q <= PEER_MAX_QUBITS.get(name, 99):
                steps[name] = PEERS[name][1](work)
        errors = {name: check(step, reference, work) for name, step in steps.items()}  # also warms up (jit)
        calls = {}
        for name, step in steps.items():  # calls per repetition: about `seconds` each
            t = best_ms(step, params, 1)
            calls[name] = max(1, int(1e3 * seconds / max(t, 1e-3)))
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(repeats):
            for name, step in steps.items():
                best[name] = min(best[name], best_ms(step, params, calls[name]))
        print(f"{q:2d} qubits: " + ", ".join(f"{n} {ms:.3f} ms" for n, ms in best.items()), file=sys.stderr)
        results[str(q)] = {"ms": best, "max_abs_error": errors}
    return results


FIRST_CALL = """
import sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {path!r})
from kernel_peers import Workload, peak_rss_gib, qflgym_step
work = Workload({q})
params, _, _ = work.data()
step = qflgym_step(work)
t = time.perf_counter(); step(params); first = time.perf_counter() - t
t = time.perf_counter(); step(params); second = time.perf_counter() - t
print(first, second, peak_rss_gib())
"""


def first_call(q: int) -> dict[str, float]:
    """First and second call seconds and the process's peak RSS (GiB) of the fused kernel, in a fresh process."""
    code = FIRST_CALL.format(path=str(Path(__file__).resolve().parent), q=q)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"first_call_s": float(out[0]), "second_call_s": float(out[1]), "peak_rss_gib": float(out[2])}


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


def rounds_table(quick: bool) -> dict[str, dict[str, float | None]]:
    """Full federated rounds per second of each preset and backend."""
    budget = {  # (min_rounds, min_seconds, warm-up rounds) per backend; a loop round takes seconds to minutes
        "torch": (200, 1.0, 5) if quick else (2000, 5.0, 20),
        "pennylane": (3, 1.0, 1) if quick else (20, 5.0, 2),
        "loop": (1, 0.0, 0) if quick else (2, 5.0, 0),
    }
    results: dict[str, dict[str, float | None]] = {}
    for preset in PRESETS:
        speeds: dict[str, float | None] = {}
        for name, backend in BACKENDS.items():
            if quick and name == "loop" and preset != PRESETS[0]:
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
    return results


def print_kernel(results: dict[str, dict], memory: dict[str, float] | None) -> None:
    """The kernel table: ms per call and each implementation's time / qflgym's."""
    names = list(dict.fromkeys(n for r in results.values() for n in r["ms"]))
    print("| simulator | " + " | ".join(f"{q} qubits ms (x qflgym)" for q in results) + " |")
    print("|---|" + "---:|" * len(results))
    for name in names:
        cells = []
        for r in results.values():
            ms = r["ms"].get(name)
            cells.append("–" if ms is None else f"{ms:.3f} ({ms / r['ms']['qflgym']:.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    for q, r in results.items():
        peers = {n: ms for n, ms in r["ms"].items() if not n.startswith("qflgym")}
        if peers:
            best = min(peers, key=peers.get)
            print(f"\n{q} qubits: best peer {best}, qflgym is {peers[best] / r['ms']['qflgym']:.1f}x faster", end="")
    print()
    if memory:
        print(
            f"\nlargest size, fresh process: first call {memory['first_call_s']:.2f} s, second "
            f"{memory['second_call_s']:.2f} s, peak RSS {memory['peak_rss_gib']:.2f} GiB"
        )


def main() -> int:
    """Measure, print Markdown tables, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter timings (and a shorter rounds table)")
    parser.add_argument("--qubits", type=int, nargs="*", default=[4, 8, 12], help="kernel sizes (default 4 8 12)")
    parser.add_argument("--peers", nargs="*", default=None, help=f"peers to time (default: installed of {list(PEERS)})")
    parser.add_argument("--rounds", action="store_true", help="also time full federated rounds per preset")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1: fastest here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    peers = available_peers() if args.peers is None else args.peers
    seconds, repeats = (0.05, 3) if args.quick else (0.3, 7)
    kernel = kernel_table(args.qubits, peers, seconds, repeats)
    memory = first_call(max(args.qubits)) if args.qubits else None
    where = f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
    print(f"\nkernel: 8 clients x 32 samples, 2 layers, float64, forward + backward ({where})\n")
    print_kernel(kernel, memory)
    output: dict[str, object] = {"kernel": kernel, "largest_size_memory": memory}
    if args.rounds:
        rounds = rounds_table(args.quick)
        print(
            "\n| preset | torch rounds/s | PennyLane broadcast rounds/s | per-sample loop rounds/s "
            "| speedup vs PennyLane | speedup vs loop |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for preset, r in rounds.items():
            loop = "not run (--quick)" if r["loop_rounds_per_s"] is None else f"{r['loop_rounds_per_s']:.4f}"
            vs_loop = "–" if r["speedup_vs_loop"] is None else f"{r['speedup_vs_loop']:.0f}x"
            print(
                f"| {preset} | {r['torch_rounds_per_s']:.1f} | {r['pennylane_rounds_per_s']:.2f} "
                f"| {loop} | {r['speedup_vs_pennylane']:.1f}x | {vs_loop} |"
            )
        output["presets"] = rounds
    if args.json:
        args.json.write_text(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
