"""Pair saved per-seed results seed by seed: each run against the first (the reference), stalls and medians.

    python benchmarks/paired_runs.py REFERENCE.json RUN.json [RUN.json ...] [--stall 2000]

Every file is a ``benchmarks/learned_vs_headroom.py --json`` result (``controller``, ``seeds``, ``per_seed``) on
the same seeds; the statistics are :func:`qflgym.agents.evaluation.paired.paired_comparison` (lower is better).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from qflgym.agents.evaluation.paired import paired_comparison


def main(argv: list[str] | None = None) -> int:
    """Print every run's stalls and median, and its pairing against each earlier file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="learned_vs_headroom.py --json files, the reference first")
    parser.add_argument("--stall", type=float, default=2000.0, help="objective at or above which an episode stalled")
    args = parser.parse_args(argv)
    runs = []
    for path in args.runs:
        with open(path) as fh:
            data = json.load(fh)
        runs.append((data["controller"], data["seeds"], np.asarray(data["per_seed"], dtype=float)))
    if len(runs) < 2 or any(seeds != runs[0][1] for _, seeds, _ in runs):
        parser.error("runs: give at least two files on the same seeds")
    for name, seeds, x in runs:
        stalled = [s for s, v in zip(seeds, x, strict=True) if v >= args.stall]
        print(f"{name}: mean {x.mean():.1f}, median {np.median(x):.1f}, {len(stalled)} stalls {stalled}")
    for i, (ref_name, _, ref) in enumerate(runs):
        for name, _, x in runs[i + 1 :]:
            c = paired_comparison(ref, x)
            s = c.saving
            both = (ref < args.stall) & (x < args.stall)
            print(
                f"{name} vs {ref_name}: saving {100 * s.value:+.1f}% [{100 * s.low:+.1f}%, {100 * s.high:+.1f}%], "
                f"P(improve) {c.probability_of_improvement:.2f}, n={c.n}; both finish on {int(both.sum())} seeds, "
                f"medians {np.median(x[both]):.1f} vs {np.median(ref[both]):.1f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
