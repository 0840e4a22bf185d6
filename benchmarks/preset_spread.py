"""Does control matter? Fixed rules on every default and hard preset, rounds-to-target and accuracy.

Runs simple fixed controllers over 5 seeds (the same 5 federations for every rule of an env) and reports
rounds-to-target, final accuracy and costs per rule, plus the best-vs-worst spread in rounds-to-target.
The acceptance check of the suite: on ``QFL/ClientSelection-v0`` the best and the worst rule must differ by at
least 20% (``(worst - best) / worst``) in mean rounds-to-target.

Rules are the agents' heuristic controllers (``make_controller("composite", ...)``, one implementation with
``qflgym.envs.rules``):

* selection: ``random-k`` (k = ``clients_per_round``), ``all-clients``, ``loss-greedy`` (k highest last loss);
* step size: ``fixed`` lr (``constant-lr``, the base lr), ``decayed`` lr (``step-decay`` from 2 x base by 0.95
  every round), ``high`` lr (``constant-lr`` at 5 x base);
* termination: ``never`` stop, ``patience`` stop (10 rounds without a new best validation accuracy).

Rounds-to-target is the first round whose validation accuracy reaches the env's ``target_accuracy`` (for
RoundTermination, which has no target by default, the ClientSelection target is used for reporting); an
episode that never reaches it counts as ``round_budget`` (censored; the ``reached`` column says how often).

Usage::

    python benchmarks/preset_spread.py                   # all presets, 5 seeds (slow: the hard presets)
    python benchmarks/preset_spread.py --quick           # default presets, 2 seeds
    python benchmarks/preset_spread.py --markdown docs/preset_spread.md --json runs/preset_spread.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from threadpoolctl import threadpool_limits

import qflgym.envs  # noqa: F401  (registers the ids)
from qflgym.agents.controllers import Controller, make_controller

REFERENCE_TARGET = 0.75

#: Rules per env: name -> (selection, lr schedule, termination).
RULES: dict[str, dict[str, tuple[str, str, str]]] = {
    "ClientSelection": {
        "random-k": ("random-k", "fixed", "never"),
        "all-clients": ("all-clients", "fixed", "never"),
        "loss-greedy": ("loss-greedy", "fixed", "never"),
    },
    "StepSize": {
        "fixed-lr": ("random-k", "fixed", "never"),
        "decayed-lr": ("random-k", "decayed", "never"),
        "high-lr": ("random-k", "high", "never"),
    },
    "RoundTermination": {
        "never-stop": ("random-k", "fixed", "never"),
        "patience-stop": ("random-k", "fixed", "patience"),
    },
    "FullControl": {
        "random-k/fixed/never": ("random-k", "fixed", "never"),
        "all-clients/fixed/never": ("all-clients", "fixed", "never"),
        "loss-greedy/decayed/patience": ("loss-greedy", "decayed", "patience"),
        "all-clients/high/patience": ("all-clients", "high", "patience"),
    },
}

PATIENCE = 10


def rule_controller(env: gym.Env, selection: str, lr: str, stop: str) -> Controller:
    """The heuristic controller of one rule (knobs the env does not control are ignored by its codec)."""
    base = env.unwrapped.lr_map.base_lr
    step_size = {
        "fixed": ("constant-lr", {}),
        "decayed": ("step-decay", {"lr": 2.0 * base, "gamma": 0.95, "every": 1}),
        "high": ("constant-lr", {"lr": 5.0 * base}),
    }[lr]
    termination = {"never": ("never", {}), "patience": ("patience", {"patience": PATIENCE})}[stop]
    return make_controller(
        "composite",
        env,
        selection=selection,
        step_size=step_size[0],
        step_size_kwargs=step_size[1],
        termination=termination[0],
        termination_kwargs=termination[1],
    )


@dataclass
class Result:
    """Episodes of one rule on one preset."""

    rounds_to_target: list[int] = field(default_factory=list)
    reached: list[bool] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    megabytes: list[float] = field(default_factory=list)
    wall_time_s: list[float] = field(default_factory=list)
    shots: list[float] = field(default_factory=list)
    ret: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Means (and the std of rounds-to-target) over seeds."""
        return {
            "rounds_to_target": float(np.mean(self.rounds_to_target)),
            "rounds_to_target_std": float(np.std(self.rounds_to_target)),
            "reached": int(np.sum(self.reached)),
            "episodes": len(self.reached),
            "rounds": float(np.mean(self.rounds)),
            "val_accuracy": float(np.mean(self.val_accuracy)),
            "test_accuracy": float(np.nanmean(self.test_accuracy)) if self.test_accuracy else float("nan"),
            "megabytes": float(np.mean(self.megabytes)),
            "wall_time_s": float(np.mean(self.wall_time_s)),
            "shots": float(np.mean(self.shots)),
            "return": float(np.mean(self.ret)),
        }


def run_rule(env: gym.Env, controller: Controller, seeds: list[int], target: float) -> Result:
    """Run one episode per seed (the controller's generator reseeded with ``10_000 + seed``)."""
    res = Result()
    budget = env.unwrapped.config.round_budget
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        controller.reset(seed=10_000 + seed)
        hit, total, info = None, 0.0, {}
        while True:
            action, _ = controller.predict(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            if hit is None and info["val_accuracy"] >= target and not info["stopped"]:
                hit = info["round"]
            if terminated or truncated:
                break
        test_acc = env.unwrapped.federation.evaluate()["test_accuracy"]
        res.rounds_to_target.append(hit if hit is not None else budget)
        res.reached.append(hit is not None)
        res.rounds.append(info["round"])
        res.val_accuracy.append(info["val_accuracy"])
        res.test_accuracy.append(test_acc)
        res.megabytes.append(info["total_bytes"] / 1e6)
        res.wall_time_s.append(info["total_wall_time_s"])
        res.shots.append(info["total_shots"])
        res.ret.append(total)
    return res


def spread(summaries: dict[str, dict[str, float]]) -> float:
    """``(worst - best) / worst`` of mean rounds-to-target over the rules."""
    values = [s["rounds_to_target"] for s in summaries.values()]
    return (max(values) - min(values)) / max(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="default presets only, 2 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per rule (default 5, quick 2)")
    parser.add_argument("--envs", nargs="*", default=None, help="env ids (default: every default and hard id)")
    parser.add_argument("--config", type=json.loads, default=None, help="JSON overrides for every env's config")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables as Markdown here")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n_seeds = args.seeds or (2 if args.quick else 5)
    seeds = list(range(n_seeds))
    names = list(RULES)
    env_ids = args.envs or [f"QFL/{n}{v}-v0" for n in names for v in ("", "-Hard") if not (args.quick and v)]
    results: dict[str, dict[str, dict[str, float]]] = {}
    lines = [
        f"Generated by `python benchmarks/preset_spread.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
        f" ({n_seeds} seeds; {platform.machine()}, torch {torch.__version__}).",
        "",
    ]
    start = time.perf_counter()
    with threadpool_limits(1):
        for env_id in env_ids:
            name = env_id.split("/")[1].split("-")[0]
            env = gym.make(env_id, config=args.config)
            target = env.unwrapped.config.target_accuracy or REFERENCE_TARGET
            t0 = time.perf_counter()
            summaries = {
                rule: run_rule(env, rule_controller(env, *spec), seeds, target).summary()
                for rule, spec in RULES[name].items()
            }
            results[env_id] = summaries
            s = spread(summaries)
            budget = env.unwrapped.config.round_budget
            header = (
                f"### {env_id} (target {target:.2f}, budget {budget}, {env.unwrapped.n_clients} clients; "
                f"spread {100 * s:.0f}%)"
            )
            table = [
                header,
                "",
                "| rule | rounds to target | reached | rounds run | final val acc | final test acc | MB | "
                "wall time s | shots | return |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for rule, r in summaries.items():
                table.append(
                    f"| {rule} | {r['rounds_to_target']:.1f} ± {r['rounds_to_target_std']:.1f} | "
                    f"{r['reached']}/{r['episodes']} | {r['rounds']:.1f} | {r['val_accuracy']:.3f} | "
                    f"{r['test_accuracy']:.3f} | {r['megabytes']:.3f} | {r['wall_time_s']:.1f} | "
                    f"{r['shots']:.3g} | {r['return']:+.3f} |"
                )
            table.append("")
            print("\n".join(table), f"({time.perf_counter() - t0:.1f} s)\n", flush=True)
            lines.extend(table)
    cs = results.get("QFL/ClientSelection-v0")
    verdict = ""
    if cs is not None:
        s = spread(cs)
        verdict = (
            f"ClientSelection-v0 best-vs-worst spread in rounds-to-target: {100 * s:.0f}% "
            f"({'PASS' if s >= 0.2 else 'FAIL'}: needs >= 20%)"
        )
        print(verdict)
        lines.append(f"**{verdict}**")
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seeds": seeds, "results": results}, indent=2))
    return 0 if cs is None or spread(cs) >= 0.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
