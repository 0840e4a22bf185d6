"""Does control matter? Fixed rules on every default and hard preset, rounds-to-target and accuracy.

Runs simple fixed controllers over 5 seeds (the same 5 federations for every rule of an env) and reports
rounds-to-target, final accuracy and costs per rule, plus the best-vs-worst spread in rounds-to-target.
The acceptance check of the suite: on ``QFL/ClientSelection-v0`` the best and the worst rule must differ by at
least 20% (``(worst - best) / worst``) in mean rounds-to-target.

Rules:

* selection: ``random_k`` (k = ``clients_per_round``), ``all`` clients, ``loss_greedy`` (k highest last loss);
* step size: ``fixed`` lr (the base lr), ``decayed`` lr (``2 x base x 0.95^t``), ``high`` lr (``5 x base``);
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
from qflgym.envs import ControlDecision
from qflgym.envs.rules import SELECTION_RULES

REFERENCE_TARGET = 0.75

#: Rules per env: name -> (selection, lr schedule, termination).
RULES: dict[str, dict[str, tuple[str, str, str]]] = {
    "ClientSelection": {
        "random_k": ("random_k", "fixed", "never"),
        "all": ("all", "fixed", "never"),
        "loss_greedy": ("loss_greedy", "fixed", "never"),
    },
    "StepSize": {
        "fixed_lr": ("random_k", "fixed", "never"),
        "decayed_lr": ("random_k", "decayed", "never"),
        "high_lr": ("random_k", "high", "never"),
    },
    "RoundTermination": {
        "never_stop": ("random_k", "fixed", "never"),
        "patience_stop": ("random_k", "fixed", "patience"),
    },
    "FullControl": {
        "random_k/fixed/never": ("random_k", "fixed", "never"),
        "all/fixed/never": ("all", "fixed", "never"),
        "loss_greedy/decayed/patience": ("loss_greedy", "decayed", "patience"),
        "all/high/patience": ("all", "high", "patience"),
    },
}


class RuleController:
    """A fixed rule acting through the env's action codec (fields the env does not control are ignored)."""

    def __init__(self, selection: str, lr: str, stop: str, patience: int = 10) -> None:
        self.selection, self.lr, self.stop, self.patience = selection, lr, stop, patience

    def reset(self, seed: int) -> None:
        """Start an episode."""
        self.rng = np.random.default_rng(10_000 + seed)
        self.t = 0
        self.best = -1.0
        self.since_best = 0

    def act(self, env: gym.Env, obs: np.ndarray) -> object:
        """The action for this round."""
        u = env.unwrapped
        acc = u.layout.global_(obs, "val_accuracy")
        if acc > self.best:
            self.best, self.since_best = acc, 0
        else:
            self.since_best += 1
        selected = SELECTION_RULES.get(self.selection)(u.client_state, u.config.k, self.rng)
        base = u.lr_map.base_lr
        lr = {"fixed": base, "decayed": 2.0 * base * 0.95**self.t, "high": 5.0 * base}[self.lr]
        stop = self.stop == "patience" and self.since_best >= self.patience
        self.t += 1
        return u.action_codec.encode(ControlDecision(selected, lr, u.config.fixed_local_steps, stop))


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


def run_rule(env: gym.Env, controller: RuleController, seeds: list[int], target: float) -> Result:
    """Run one episode per seed."""
    res = Result()
    budget = env.unwrapped.config.round_budget
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        controller.reset(seed)
        hit, total, info = None, 0.0, {}
        while True:
            obs, reward, terminated, truncated, info = env.step(controller.act(env, obs))
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
                rule: run_rule(env, RuleController(*spec), seeds, target).summary()
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
