"""Text QFL: PQC heads on a frozen sentence encoder vs classical heads of comparable size, and federated adapters.

Part 1 (Girotto et al., arXiv 2504.08732): test accuracy on ``rotten_tomatoes`` (all-MiniLM-L6-v2 embeddings,
cached) of PQC heads with 4, 6, 8 and 10 qubits against classical heads of comparable parameter count, trained
centralized (one client holding the whole training split) and federated (10 clients, Dirichlet alpha 0.3, all
training every round), seeds 0..S-1, reported as mean ± 95% CI. Heads (every one on the same split and budget):

* ``vqc-angle``  — the project's VQC: PCA to Q angles, data re-uploading, long-range entanglers, Q-qubit
  linear readout (``2 * 3Q + 2Q + 2`` parameters);
* ``vqc-amp``    — amplitude encoding: a constant amplitude and 2^Q - 1 PCA components (zero-padded above
  384), unit-normalized, long-range entanglers, Q-qubit linear readout (``2 * 3Q + 2Q + 2``);
* ``vqc-amp1``   — Girotto-style: the same with a one-qubit readout and a linear head (``2 * 3Q + 4``);
* ``logreg``     — logistic regression on the Q angles (``2Q + 2``);
* ``mlp``        — one tanh layer on the Q angles, its width matched to ``vqc-angle``'s parameter count.

Part 2 (LLM-QFL, arXiv 2505.18656, done for real), seeds 0..A-1: 10 clients (Dirichlet 0.3) of which 3 (drawn
with the seed) fine-tune MiniLM's adapter (``--adapters``: LoRA, and the quantum QPA / QAA adapters of
``qflgym.agents.llm.quantum``) and the 4-qubit VQC head every round, on a stratified subset of
the corpus; against the frozen-encoder run of the same head, selection and optimizer: test accuracy per round, bytes per
round, and measured seconds per round.

    OMP_NUM_THREADS=1 python benchmarks/text_qfl.py --out benchmarks/results/text_qfl
    python benchmarks/text_qfl.py --quick     # a pipeline check (2 seeds, 2 qubit counts, few rounds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from qflgym.runs import write_run_record

HEADS = ("vqc-angle", "vqc-amp", "vqc-amp1", "logreg", "mlp")
SETTINGS = {"centralized": {"n_clients": 1, "scheme": "iid"}, "federated": {"n_clients": 10, "scheme": "dirichlet"}}


def head_config(head: str, qubits: int, setting: str, args: argparse.Namespace) -> dict[str, Any]:
    """The federation config of one head, qubit count and setting."""
    circuit = {"n_qubits": qubits, "n_layers": 2, "entangler": "long_range", "readout": "linear"}
    if head.startswith("vqc-amp"):
        circuit |= {"embedding": "amplitude", "readout_qubits": 1 if head == "vqc-amp1" else None}
    else:
        circuit |= {"reupload": True}
    angle_circuit = {**circuit, "embedding": "angle"} if head in ("logreg", "mlp") else circuit
    return {
        "data": {"dataset": "rotten_tomatoes", "max_samples": args.max_samples},
        "partition": {"scheme": SETTINGS[setting]["scheme"], "alpha": 0.3, "min_samples": 8},
        "circuit": angle_circuit,
        "clients": {"n_clients": SETTINGS[setting]["n_clients"]},
        "training": {"optimizer": "adam", "lr": args.lr, "local_steps": args.local_steps, "batch_size": 32},
        "model": {"kind": "vqc" if head.startswith("vqc") else head},
    }


def run_head(task: tuple[str, int, str, int, argparse.Namespace]) -> dict[str, Any]:
    """Train one head for ``args.rounds`` rounds (every client each round); its final test accuracy."""
    import torch

    from qflgym.qfl_core.kinds import make_federation

    torch.set_num_threads(1)
    head, qubits, setting, seed, args = task
    fed = make_federation(head_config(head, qubits, setting, args), seed)
    started = time.perf_counter()
    for _ in range(args.rounds):
        report = fed.run_round(np.arange(fed.n_clients))
    return {
        "head": head,
        "qubits": qubits,
        "setting": setting,
        "seed": seed,
        "n_params": fed.n_params,
        "test_accuracy": report.test_accuracy,
        "val_accuracy": report.val_accuracy,
        "s_per_round": (time.perf_counter() - started) / args.rounds,
    }


def adapter_config(kind: str, args: argparse.Namespace, adapter: str = "lora") -> dict[str, Any]:
    """The federated-adapter run (``adapter``, with the encoder adapter ``adapter``) or its frozen twin (``vqc``)."""
    return {
        "data": {"dataset": "rotten_tomatoes", "max_samples": args.adapter_samples, "val_fraction": 0.05},
        "partition": {"scheme": "dirichlet", "alpha": 0.3, "min_samples": 8},
        "circuit": {"n_qubits": 4, "n_layers": 2, "reupload": True, "entangler": "long_range"},
        "clients": {"n_clients": 10},
        "training": {
            "optimizer": "adam",
            "lr": args.adapter_lr,
            "local_steps": args.adapter_local_steps,
            "batch_size": 16,
        },
        "model": {"kind": kind, "adapter": adapter, "head": "vqc", "r": 4, "alpha": 8, "max_length": 64},
    }


def run_adapter(run: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Rounds of one run (``vqc``: the frozen encoder; else an adapter name).

    3 clients drawn with the seed per round; accuracy, bytes and seconds per round.
    """
    import torch

    from qflgym.qfl_core.kinds import make_federation

    torch.set_num_threads(1)
    config = adapter_config("vqc", args) if run == "vqc" else adapter_config("adapter", args, run)
    fed = make_federation(config, seed)
    rng = np.random.default_rng(seed)
    rounds = [{"round": 0, **fed.evaluate(), "bytes": 0, "seconds": 0.0}]
    for r in range(1, args.adapter_rounds + 1):
        selected = np.sort(rng.choice(fed.n_clients, 3, replace=False))
        started = time.perf_counter()
        report = fed.run_round(selected)
        rounds.append(
            {
                "round": r,
                "test_accuracy": report.test_accuracy,
                "val_accuracy": report.val_accuracy,
                "bytes": report.bytes_uploaded + report.bytes_downloaded,
                "seconds": time.perf_counter() - started,
            }
        )
    return {"kind": run, "seed": seed, "n_params": fed.n_params, "param_bytes": fed.param_bytes, "rounds": rounds}


def adapter_summary(adapters: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per round: mean test accuracy of each run kind (``vqc``: the frozen encoder; the adapters by name).

    Per adapter: adapter - frozen paired by seed (final and best round); bytes and seconds per round.
    """
    from qflgym.agents.evaluation.stats import mean_ci

    acc = {k: np.array([[r["test_accuracy"] for r in run["rounds"]] for run in runs]) for k, runs in adapters.items()}
    frozen = acc["vqc"]
    paired = {
        k: {
            "final": [float(v) for v in mean_ci(a[:, -1] - frozen[:, -1])],
            "best_round": [float(v) for v in mean_ci(a[:, 1:].max(1) - frozen[:, 1:].max(1))],
        }
        for k, a in acc.items()
        if k != "vqc"
    }
    return {
        "rounds": [
            {"round": i, **{f"{k}_test_accuracy": float(a[:, i].mean()) for k, a in acc.items()}}
            for i in range(frozen.shape[1])
        ],
        "final": {k: [float(v) for v in mean_ci(a[:, -1])] for k, a in acc.items()},
        "adapter_minus_frozen": paired,
        "bytes_per_round": {k: runs[0]["rounds"][-1]["bytes"] for k, runs in adapters.items()},
        "seconds_per_round": {
            k: float(np.mean([r["seconds"] for run in runs for r in run["rounds"][1:]])) for k, runs in adapters.items()
        },
        "n_params": {k: runs[0]["n_params"] for k, runs in adapters.items()},
        "seeds": [run["seed"] for run in adapters["vqc"]],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± CI per (setting, qubits, head), and the two findings paired by seed."""
    from qflgym.agents.evaluation.stats import mean_ci

    def values(setting: str, qubits: int, head: str) -> np.ndarray:
        rows = [r for r in runs if (r["setting"], r["qubits"], r["head"]) == (setting, qubits, head)]
        return np.array([r["test_accuracy"] for r in sorted(rows, key=lambda r: r["seed"])])

    qubit_counts = sorted({r["qubits"] for r in runs})
    table: dict[str, Any] = {}
    findings: dict[str, Any] = {}
    for setting in SETTINGS:
        for q in qubit_counts:
            for head in HEADS:
                v = values(setting, q, head)
                mean, half = mean_ci(v)
                key = (setting, q, head)
                n_params = next(r["n_params"] for r in runs if (r["setting"], r["qubits"], r["head"]) == key)
                table[f"{setting}/{q}/{head}"] = {"mean": float(mean), "ci": float(half), "n_params": n_params}
        for head in ("vqc-angle", "vqc-amp", "vqc-amp1"):
            gain = values(setting, qubit_counts[-1], head) - values(setting, qubit_counts[0], head)
            mean, half = mean_ci(gain)
            label = f"{setting}/{head}: acc({qubit_counts[-1]}q) - acc({qubit_counts[0]}q)"
            findings[label] = [float(mean), float(half)]
        for q in qubit_counts:
            diff = values(setting, q, "vqc-angle") - values(setting, q, "mlp")
            mean, half = mean_ci(diff)
            findings[f"{setting}/{q}q: vqc-angle - mlp (matched size)"] = [float(mean), float(half)]
    return {"table": table, "findings": findings}


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    table, qubits = result["summary"]["table"], result["qubits"]
    lines = [
        "| setting | qubits | " + " | ".join(f"{h} acc (params)" for h in HEADS) + " |",
        "|---|---:|" + "---:|" * len(HEADS),
    ]
    for setting in SETTINGS:
        for q in qubits:
            cells = [table[f"{setting}/{q}/{h}"] for h in HEADS]
            lines.append(
                f"| {setting} | {q} | "
                + " | ".join(f"{c['mean']:.3f} ± {c['ci']:.3f} ({c['n_params']})" for c in cells)
                + " |"
            )
    lines += ["", "| paired by seed (test accuracy difference) | mean ± 95% CI |", "|---|---:|"]
    lines += [f"| {k} | {m:+.3f} ± {h:.3f} |" for k, (m, h) in result["summary"]["findings"].items()]
    if result.get("adapter_summary"):
        summary = result["adapter_summary"]
        kinds = list(summary["final"])
        names = ["frozen encoder" if k == "vqc" else f"federated {k} adapter" for k in kinds]
        lines += [
            "",
            f"Federated adapters, seeds {summary['seeds']}: mean test accuracy per round",
            "",
            "| round | " + " | ".join(names) + " |",
            "|---:|" + "---:|" * len(kinds),
        ]
        lines += [
            f"| {r['round']} | " + " | ".join(f"{r[f'{k}_test_accuracy']:.3f}" for k in kinds) + " |"
            for r in summary["rounds"]
        ]
        rows = {
            "final test accuracy": [f"{m:.3f} ± {h:.3f}" for m, h in (summary["final"][k] for k in kinds)],
            "trainable (sent) parameters": [str(summary["n_params"][k]) for k in kinds],
            "bytes per round": [str(summary["bytes_per_round"][k]) for k in kinds],
            "seconds per round (measured)": [f"{summary['seconds_per_round'][k]:.3g}" for k in kinds],
        }
        lines += ["", "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(kinds)]
        lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows.items()]
        lines += [""] + [
            "{} - frozen, paired by seed: final {:+.3f} ± {:.3f}, best round {:+.3f} ± {:.3f}".format(
                k, *d["final"], *d["best_round"]
            )
            for k, d in summary["adapter_minus_frozen"].items()
        ]
    return "\n".join(lines) + "\n"


def print_table(result: dict[str, Any], console: Console) -> None:
    """The head comparison and the findings on the console."""
    table = Table(title=f"rotten_tomatoes test accuracy, {len(result['seeds'])} seeds (mean ± 95% CI, params)")
    for column in ("setting", "qubits", *HEADS):
        table.add_column(column)
    for setting in SETTINGS:
        for q in result["qubits"]:
            cells = [result["summary"]["table"][f"{setting}/{q}/{h}"] for h in HEADS]
            table.add_row(setting, str(q), *(f"{c['mean']:.3f} ± {c['ci']:.3f} ({c['n_params']})" for c in cells))
    console.print(table)
    for key, (mean, half) in result["summary"]["findings"].items():
        console.print(f"{key}: {mean:+.3f} ± {half:.3f}")
    if result.get("adapter_summary"):
        console.print("Federated adapters" + markdown(result).split("Federated adapters", 1)[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/text_qfl"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--qubits", type=int, nargs="+", default=[4, 6, 8, 10])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate of every head")
    parser.add_argument("--max-samples", type=int, default=4000, help="stratified subset of the 12,808 snippets")
    parser.add_argument("--adapter-rounds", type=int, default=10)
    parser.add_argument("--adapter-local-steps", type=int, default=4)
    parser.add_argument("--adapter-samples", type=int, default=2000)
    parser.add_argument(
        "--adapter-lr", type=float, default=0.05, help="Adam lr of the head (the adapter's: x model.adapter_lr_scale)"
    )
    parser.add_argument("--adapter-seeds", type=int, default=3)
    parser.add_argument("--adapters", nargs="+", default=["lora"], help="encoder adapters to federate (lora, qpa, qaa)")
    parser.add_argument("--no-adapters", action="store_true")
    parser.add_argument("--reuse-heads", type=Path, default=None, help="take part 1 from this text_qfl.json")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 4 and 6 qubits, 4 rounds, 2 adapter rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.qubits, args.rounds, args.max_samples = 2, [4, 6], 4, 1000
        args.adapter_rounds, args.adapter_seeds = 2, 2
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    federations = {f"{h}/{q}q/{s}": head_config(h, q, s, args) for s in SETTINGS for q in args.qubits for h in HEADS}
    federations |= {"adapters/vqc": adapter_config("vqc", args)}
    federations |= {f"adapters/{name}": adapter_config("adapter", args, name) for name in args.adapters}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_run_record(args.out, {"args": settings, "federations": federations})
    from qflgym.qfl_core.kinds import make_federation

    make_federation(head_config("logreg", 4, "centralized", args), 0)  # fill the corpus and embedding caches once
    tasks = [(h, q, s, seed, args) for s in SETTINGS for q in args.qubits for h in HEADS for seed in range(args.seeds)]
    tasks.sort(key=lambda t: -t[1])  # the slow (many-qubit) runs first
    started = time.perf_counter()
    runs = json.loads(args.reuse_heads.read_text())["runs"] if args.reuse_heads else []
    with Progress() as progress, ProcessPoolExecutor(args.workers) as pool:
        bar = progress.add_task("heads", total=0 if runs else len(tasks))
        for run in [] if runs else pool.map(run_head, tasks):
            runs.append(run)
            progress.advance(bar)
    result: dict[str, Any] = {"seeds": list(range(args.seeds)), "qubits": args.qubits, "runs": runs}
    result["summary"] = summarize(runs)
    result["heads_wall_time_s"] = time.perf_counter() - started
    if not args.no_adapters:
        with Progress() as progress:
            kinds = ["vqc", *args.adapters]
            bar = progress.add_task("adapters", total=len(kinds) * args.adapter_seeds)
            result["adapters"] = {kind: [] for kind in kinds}
            with ProcessPoolExecutor(args.workers) as pool:
                seeds = range(args.adapter_seeds)
                jobs = [(kind, pool.submit(run_adapter, kind, seed, args)) for seed in seeds for kind in kinds]
                for kind, job in jobs:
                    result["adapters"][kind].append(job.result())
                    progress.advance(bar)
        result["adapter_summary"] = adapter_summary(result["adapters"])
    result["wall_time_s"] = time.perf_counter() - started
    (args.out / "text_qfl.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "text_qfl.md").write_text(markdown(result))
    print_table(result, Console())
    print(f"wall time {result['wall_time_s']:.0f} s; results in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
