"""Benchmark reports: the summary table (mean ± 95% CI per env and controller) and its Markdown form."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qflgym.agents.bench.suite import BenchSuite
from qflgym.agents.evaluation.stats import mean_ci

__all__ = ["SUMMARY_METRICS", "summarize", "write_markdown"]

#: ``(column, header, format)`` of the summary table.
SUMMARY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("return", "return", "{:.3f}"),
    ("final_accuracy", "final acc", "{:.3f}"),
    ("best_accuracy", "best acc", "{:.3f}"),
    ("rounds_to_target_censored", "rounds→target†", "{:.1f}"),
    ("rounds_to_target", "rounds→target", "{:.1f}"),
    ("bytes_to_target", "MB→target", "{:.3f}"),
    ("wall_time_to_target", "sim s→target", "{:.2f}"),
    ("shots_to_target", "shots→target", "{:.3g}"),
)


def _censored(df: Any) -> Any:
    """``df`` with ``rounds_to_target_censored``: unreached episodes at their env's round budget."""
    budgets = {}
    for env, env_rows in df.groupby("env", sort=False):
        has_budget = "budget" in env_rows and env_rows["budget"].notna().any()
        budgets[env] = float(env_rows["budget"].max() if has_budget else env_rows["rounds"].max())
    return df.assign(rounds_to_target_censored=df["rounds_to_target"].fillna(df["env"].map(budgets)))


def summarize(rows: Any, baseline: str | None = None) -> Any:
    """Mean and 95% CI half-width of every summary metric per (env, controller), as a DataFrame.

    ``rounds_to_target_censored`` counts episodes that never reached the target at their round budget (the
    env's time limit, or the most rounds any episode of that env ran); the other ``*_to_target`` columns
    average over the episodes that reached it.

    With a ``baseline`` controller, ``rounds_reduction`` is the paired relative reduction of the censored
    rounds-to-target, ``1 - rounds(controller) / rounds(baseline)``, averaged over the (seed, episode) pairs
    both ran -- pairing on the seed (same federation) removes most of the seed-to-seed variance.
    """
    import pandas as pd

    df = _censored(pd.DataFrame(rows))
    out = []
    for (env, controller), g in df.groupby(["env", "controller"], sort=False):
        rec: dict[str, Any] = {
            "env": env,
            "controller": controller,
            "episodes": len(g),
            "reached": int(g["reached"].sum()),
        }
        for col, _, _ in SUMMARY_METRICS:
            values = g[col].to_numpy(float)
            if col.startswith("bytes"):
                values = values / 1e6
            mean, half = mean_ci(values)
            rec[col] = float(mean)
            rec[f"{col}_ci95"] = float(half)
        rec["rounds_reduction"] = rec["rounds_reduction_ci95"] = float("nan")
        base = df[(df["env"] == env) & (df["controller"] == baseline)] if baseline else df.iloc[0:0]
        if len(base):
            key = ["seed", "episode"]
            pairs = g.merge(base, on=key, suffixes=("", "_base"))
            if len(pairs):
                ratio = pairs["rounds_to_target_censored"] / pairs["rounds_to_target_censored_base"]
                mean, half = mean_ci(1.0 - ratio.to_numpy(float))
                rec["rounds_reduction"], rec["rounds_reduction_ci95"] = float(mean), float(half)
        out.append(rec)
    return pd.DataFrame(out)


def _cell(mean: float, half: float, fmt: str) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{fmt.format(mean)} ± {fmt.format(half)}"


def write_markdown(summary: Any, path: Path, suite: BenchSuite, extra_lines: Sequence[str] = ()) -> Path:
    """Write the summary as one Markdown table per env."""
    baseline = suite.baseline if suite.baseline in {c.name for c in suite.controllers} else None
    lines = [f"# Benchmark `{suite.name}`", ""]
    if suite.description:
        lines += [suite.description.strip(), ""]
    lines += [
        f"Seeds: {', '.join(map(str, suite.seeds))} × {suite.episodes_per_seed} episode(s). "
        "Cells: mean ± 95% CI half-width (t-distribution over episodes).",
        "",
        "† unreached episodes counted at the round budget; the other →target columns average the episodes "
        "that reached the target (`reached`). Accuracy is test accuracy; the target is checked on validation "
        "accuracy. MB are uploaded megabytes; sim s is simulated wall time.",
        "",
    ]
    if baseline:
        lines += [
            f"`rounds saved vs {baseline}†`: paired over seeds, 1 − rounds→target† / rounds→target† of "
            f"{baseline} on the same seed (positive = fewer rounds).",
            "",
        ]
    lines += list(extra_lines)
    for env, g in summary.groupby("env", sort=False):
        lines += [f"## {env}", ""]
        header = ["controller", "reached", *[h for _, h, _ in SUMMARY_METRICS]]
        if baseline:
            header.insert(2, f"rounds saved vs {baseline}†")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        for _, r in g.iterrows():
            cells = [str(r["controller"]), f"{int(r['reached'])}/{int(r['episodes'])}"]
            if baseline:
                cells.append(_percent(r["rounds_reduction"], r["rounds_reduction_ci95"]))
            cells += [_cell(r[c], r[f"{c}_ci95"], fmt) for c, _, fmt in SUMMARY_METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _percent(mean: float, half: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{100 * mean:.0f}% ± {100 * half:.0f}%"
