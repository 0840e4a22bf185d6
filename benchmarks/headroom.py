"""Headroom of the v1 control problems: tuned naive baselines vs informed heuristics vs the planning oracle.

For every v1 default preset:

1. **tune** the naive baseline (random-k's k; the constant lr and local steps; the fixed stopping round) and
   the informed heuristics over their grids on *training* seeds, keeping each family's best setting;
2. **evaluate** the tuned controllers and the ``lookahead`` oracle (privileged) on ``--eval-seeds`` fresh
   seeds never used for tuning;
3. **compare** each with the tuned naive baseline, paired by seed: the mean objective with its bootstrap CI,
   the per-seed relative saving with its CI and the probability of improvement; then rliable aggregates of
   the savings across presets (IQM, optimality gap, probability of improvement).

``--json PATH`` writes ``{"presets": {ID: {"objective", "reference", "controllers": {NAME: {"mean",
"saving_vs_reference", "ci_low", "ci_high", ...}}}}, "aggregates": ...}`` (``ci_*`` bound the saving).

    OMP_NUM_THREADS=1 python benchmarks/headroom.py --json benchmarks/results/headroom.json
    python benchmarks/headroom.py --quick            # a smoke run: tiny grids, few seeds
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from qflgym.runs import write_result_record

#: The row of the clairvoyant oracle (its rollouts replay the env's own future draws).
ORACLE_LABEL = "lookahead (oracle, privileged)"

#: Per preset: the naive baseline and the informed heuristics as ``(label, controller, grid)``, and the
#: oracle's settings. A grid maps keyword -> candidate values (the product is searched on training seeds).
#: The oracle is the rollout algorithm over the tuned controller named ``base`` (a label, or ``"best"``: the lowest
#: training mean, naive baseline included): its candidates are the tuned controllers' decisions plus ``candidates``
#: random ones, each scored by the exact objective of "this decision, then ``base`` until the episode ends"
#: (``proposals``: the labels of the tuned controllers that propose candidates, default all, the naive baseline
#: included; ``resample: n`` adds a row for the same planner scoring each candidate on ``n`` redrawn futures, i.e.
#: without the clairvoyance of replaying the env's own draws; each candidate costs a rollout to the end, so the
#: oracle's time grows with candidates x rounds^2; ``"oracle": None`` runs none). A grid of a single point is
#: evaluated without tuning.
SUITE: dict[str, dict[str, Any]] = {
    "QFL/ClientSelection-v1": {
        "naive": ("random-k (tuned k)", "random-k", {"k": [1, 2, 3, 4, 6]}),
        "informed": [
            ("label-complement", "label-complement", {"k": [2, 3, 4, 6]}),
            ("oort", "oort", {"k": [1, 2, 3, 4]}),
            (
                "cost-aware",
                "cost-aware",
                {"k": [2, 3, 6], "time_weight": [0.3, 1.0, 3.0], "shot_weight": [0.3, 1.0]},
            ),
        ],
        "oracle": {"candidates": 1, "base": "cost-aware", "proposals": ["cost-aware", "label-complement"]},
    },
    "QFL/StepSize-v1": {
        "naive": (
            "constant lr/steps (tuned)",
            "constant-lr",
            {"lr": [0.3, 1.0, 2.0, 3.0, 4.0], "local_steps": [1, 2, 4]},
        ),
        "informed": [
            (
                "loss-reactive",
                "loss-reactive",
                {"start": [2.0, 3.0, 4.0], "local_steps": [1, 2], "decay": [0.5, 0.8], "tolerance": [0.0, 0.05]},
            ),
            (
                "step-decay (tuned schedule)",
                "step-decay",
                {"lr": [3.0, 4.0, 5.0], "local_steps": [1, 2], "gamma": [0.5, 0.8], "every": [5, 20]},
            ),
        ],
        "oracle": {"candidates": 2, "base": "best", "resample": 4},
    },
    "QFL/RoundTermination-v1": {
        "naive": ("fixed stopping round (tuned)", "fixed-round", {"rounds": [10, 20, 30, 40, 60, 80, 100, 150]}),
        "informed": [
            ("patience", "patience", {"patience": [3, 5, 10, 20]}),
            ("marginal-value", "marginal-value", {"price": [0.1, 0.3, 1.0, 3.0], "smoothing": [0.1, 0.3]}),
        ],
        "oracle": {"candidates": 1, "base": "best", "resample": 4},
    },
    "QFL/FullControl-v1": {
        "naive": (
            "random-k + constant lr + fixed round (tuned)",
            "composite",
            {
                "selection": ["random-k"],
                "selection_kwargs": [{"k": k} for k in (1, 2, 4)],
                "step_size_kwargs": [{"lr": lr} for lr in (1.0, 3.0)],
                "termination": ["fixed-round"],
                "termination_kwargs": [{"rounds": r} for r in (20, 40, 80, 150)],
            },
        ),
        "informed": [
            (
                "cost-aware + marginal-value",
                "composite",
                {
                    "selection": ["cost-aware"],
                    "selection_kwargs": [{"k": 2}, {"k": 3}],
                    "step_size_kwargs": [{"lr": lr} for lr in (1.0, 3.0)],
                    "termination": ["marginal-value"],
                    "termination_kwargs": [{"price": p} for p in (0.1, 0.3, 1.0, 3.0)],
                },
            ),
        ],
        "oracle": {"candidates": 1, "base": "best", "resample": 4},
    },
}

QUICK_SUITE: dict[str, dict[str, Any]] = {
    "QFL/ClientSelection-Tiny-v1": {
        "naive": ("random-k (tuned k)", "random-k", {"k": [1, 2]}),
        "informed": [("cost-aware", "cost-aware", {"k": [2, 3]})],
        "oracle": {"candidates": 1, "base": "cost-aware"},
    },
}


def _grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def _episode(task: tuple[str, str, dict[str, Any], int]) -> float:
    """The objective of one episode of ``controller(**kwargs)`` on ``env_id`` with reset seed ``seed``."""
    import gymnasium as gym

    import qflgym.envs  # noqa: F401
    from qflgym.agents.controllers import make_controller
    from qflgym.agents.evaluation.episodes import run_episode

    env_id, name, kwargs, seed = task
    env = gym.make(env_id)
    controller = make_controller(name, env, seed=seed, **kwargs)
    return run_episode(env, controller, seed=seed).objective


def _run(tasks: list[tuple[str, str, dict[str, Any], int]], workers: int, progress: Progress, what: str) -> list[float]:
    job = progress.add_task(what, total=len(tasks))
    out = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for value in pool.map(_episode, tasks, chunksize=max(1, len(tasks) // (8 * workers))):
            out.append(value)
            progress.advance(job)
    return out


def _tune(
    env_id: str, name: str, grid: dict[str, list[Any]], seeds: list[int], workers: int, progress: Progress
) -> tuple[dict[str, Any], float]:
    """The grid point with the lowest mean objective on ``seeds`` (finite means only).

    A single point is kept without running it (its training mean NaN).
    """
    points = _grid(grid)
    if len(points) == 1:
        return points[0], math.nan
    tasks = [(env_id, name, kw, s) for kw in points for s in seeds]
    values = np.array(_run(tasks, workers, progress, f"tune {name} on {env_id}")).reshape(len(points), len(seeds))
    means = values.mean(axis=1)
    best = int(np.argmin(np.where(np.isfinite(means), means, np.inf)))
    return points[best], float(means[best])


def _oracle_kwargs(oracle: dict[str, Any], chosen: list[tuple[str, str, dict[str, Any], float]]) -> dict[str, Any]:
    """The lookahead's kwargs: rollouts to the end with the tuned ``base``, the tuned controllers as proposals.

    ``base`` is a label of ``chosen`` or ``"best"``: the tuned controller with the lowest training mean.
    """
    tuned = {label: (name, kwargs) for label, name, kwargs, _ in chosen}
    if oracle["base"] == "best":
        ranked = [(mean, label) for label, _, _, mean in chosen if np.isfinite(mean)]
        base = tuned[min(ranked)[1]]
    else:
        base = tuned[oracle["base"]]
    return {
        "candidates": oracle["candidates"],
        "horizon": None,
        "score": "objective",
        "rollout": base[0],
        "rollout_kwargs": base[1],
        "proposals": [list(tuned[label]) for label in oracle.get("proposals", tuned)],
    }


def measure(
    suite: dict[str, dict[str, Any]],
    train_seeds: list[int],
    eval_seeds: list[int],
    workers: int,
    json_path: Path | None = None,
    oracle_seeds: int | None = None,
) -> dict:
    """Tune, evaluate and compare every preset of ``suite`` (see the module docstring).

    With ``json_path`` the results so far are written there after every preset. ``oracle_seeds`` evaluates the
    oracle on the first that many evaluation seeds only (it is paired with the reference on those).
    """
    import gymnasium as gym

    import qflgym.envs  # noqa: F401
    from qflgym.agents.evaluation.paired import aggregate, paired_comparison

    result: dict[str, Any] = {"presets": {}, "train_seeds": train_seeds, "eval_seeds": eval_seeds}
    savings: dict[str, list[np.ndarray]] = {}
    with Progress(transient=False) as progress:
        for env_id, spec in suite.items():
            objective = gym.make(env_id).unwrapped.config.objective
            naive_label, naive_name, naive_grid = spec["naive"]
            entries = [(naive_label, naive_name, naive_grid), *spec["informed"]]
            chosen = []
            for label, name, grid in entries:
                kwargs, train_mean = _tune(env_id, name, grid, train_seeds, workers, progress)
                chosen.append((label, name, kwargs, train_mean))
            if spec.get("oracle") is not None:
                oracle = _oracle_kwargs(spec["oracle"], chosen)
                chosen.append((ORACLE_LABEL, "lookahead", oracle, math.nan))
                futures = spec["oracle"].get("resample")
                if futures:  # the same planner without clairvoyance: it plans on redrawn futures
                    label = f"lookahead, {futures} redrawn futures (privileged)"
                    chosen.append((label, "lookahead", oracle | {"resample": futures}, math.nan))
            per_seed: dict[str, np.ndarray] = {}
            for label, name, kwargs, _ in chosen:
                seeds = eval_seeds[:oracle_seeds] if name == "lookahead" and oracle_seeds else eval_seeds
                tasks = [(env_id, name, kwargs, s) for s in seeds]
                values = np.array(_run(tasks, workers, progress, f"evaluate {label} on {env_id}"))
                per_seed[label] = np.concatenate([values, np.full(len(eval_seeds) - len(seeds), np.nan)])
            reference = per_seed[naive_label]
            controllers = {}
            for label, name, kwargs, train_mean in chosen:
                cmp = paired_comparison(reference, per_seed[label])
                controllers[label] = {
                    "controller": name,
                    "kwargs": kwargs,
                    "train_mean": train_mean,
                    "mean": cmp.mean.value,
                    "mean_ci": [cmp.mean.low, cmp.mean.high],
                    "saving_vs_reference": cmp.saving.value,
                    "ci_low": cmp.saving.low,
                    "ci_high": cmp.saving.high,
                    "probability_of_improvement": cmp.probability_of_improvement,
                    "n": cmp.n,
                    "per_seed": per_seed[label].tolist(),
                }
                role = "naive" if label == naive_label else "oracle" if label == ORACLE_LABEL else label
                if np.isfinite(per_seed[label]).all():
                    savings.setdefault(role, []).append((reference - per_seed[label]) / reference)
            result["presets"][env_id] = {"objective": objective, "reference": naive_label, "controllers": controllers}
            if json_path is not None:  # after every preset, so a long run keeps what it measured
                json_path.write_text(json.dumps(result, indent=1))
            print_tables({"presets": {env_id: result["presets"][env_id]}}, Console())
    shared = {role: np.stack(v, axis=1) for role, v in savings.items() if len(v) == len(suite)}
    agg = aggregate(shared, reference="naive") if len(shared) > 1 else {}
    result["aggregates"] = {
        role: {m: [e.value, e.low, e.high] for m, e in metrics.items()} for role, metrics in agg.items()
    }
    return result


def print_tables(result: dict, console: Console) -> None:
    """One table per preset, then the aggregates."""
    for env_id, preset in result["presets"].items():
        table = Table(title=f"{env_id} — objective {preset['objective']} (lower is better), vs {preset['reference']}")
        for col in ("controller", "setting", "mean [95% CI]", "saving [95% CI]", "P(improve)"):
            table.add_column(col, justify="left" if col in ("controller", "setting") else "right")
        for label, c in preset["controllers"].items():
            setting = ", ".join(f"{k}={v}" for k, v in c["kwargs"].items())
            table.add_row(
                label,
                setting,
                f"{_num(c['mean'])} [{_num(c['mean_ci'][0])}, {_num(c['mean_ci'][1])}]",
                f"{_pct(c['saving_vs_reference'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]",
                _num(c["probability_of_improvement"]),
            )
        console.print(table)
    if result.get("aggregates"):
        table = Table(title="rliable aggregates of the per-seed savings across presets [95% CI]")
        for col in ("role", "IQM", "optimality gap", "P(improve over naive)"):
            table.add_column(col)
        for role, m in result["aggregates"].items():
            cells = [
                f"{_num(v[0])} [{_num(v[1])}, {_num(v[2])}]" if v else "n/a"
                for v in (m.get("iqm"), m.get("optimality_gap"), m.get("probability_of_improvement"))
            ]
            table.add_row(role, *cells)
        console.print(table)


def _num(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3g}"


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-seeds", type=int, default=10, help="tuning seeds 0..n-1")
    parser.add_argument("--eval-seeds", type=int, default=50, help="evaluation seeds 10000..10000+n-1")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--presets", nargs="*", help="env ids of the suite to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny preset and grids, 3 + 4 seeds (a smoke run)")
    parser.add_argument("--oracle-seeds", type=int, help="evaluate the oracle on the first n evaluation seeds only")
    parser.add_argument("--json", type=Path, help="write the results here (and the command and settings beside)")
    args = parser.parse_args(argv)
    suite = QUICK_SUITE if args.quick else SUITE
    if args.presets:
        unknown = sorted(set(args.presets) - set(suite))
        if unknown:
            parser.error(f"--presets: unknown {unknown}; allowed: {', '.join(suite)}")
        suite = {k: v for k, v in suite.items() if k in args.presets}
    n_train, n_eval = (3, 4) if args.quick else (args.train_seeds, args.eval_seeds)
    measure_and_save(suite, n_train, n_eval, args, lambda result: print_tables(result, Console()), args.oracle_seeds)
    return 0


def measure_and_save(
    suite: dict[str, dict[str, Any]],
    n_train: int,
    n_eval: int,
    args: argparse.Namespace,
    report: Callable[[dict], None],
    oracle_seeds: int | None = None,
) -> dict:
    """:func:`measure` on training seeds ``0..n_train-1`` and evaluation seeds ``10000..``, saved.

    Writes a run record and the result JSON at ``args.json`` (when given); ``report`` prints (and may extend)
    the result before it is saved.
    """
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_result_record(args.json, args)
    started = time.perf_counter()
    eval_seeds = list(range(10_000, 10_000 + n_eval))
    result = measure(suite, list(range(n_train)), eval_seeds, args.workers, args.json, oracle_seeds)
    result["wall_time_s"] = time.perf_counter() - started
    report(result)
    print(f"wall time {result['wall_time_s']:.0f} s on {args.workers} workers")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
