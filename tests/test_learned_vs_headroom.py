"""benchmarks/learned_vs_headroom.py: worker processes and reused results give the numbers of one plain run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learned_vs_headroom.py"
ENV_ID = "QFL/ClientSelection-Tiny-v1"
SEEDS = [10000, 10001, 10002, 10003]


def _run(tmp_path: Path, name: str, *flags: str) -> dict:
    out = tmp_path / f"{name}.json"
    command = [sys.executable, str(SCRIPT), str(tmp_path / "headroom.json"), "--env", ENV_ID]
    command += ["--controller", "cost-aware", "--kwargs", "{k: 2}", "--label", "cost-aware", "--json", str(out)]
    subprocess.run([*command, *flags], check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def test_workers_and_reuse_reproduce_a_plain_run(tmp_path):
    reference = {"controller": "random-k", "per_seed": [10.0, 20.0, 30.0, 40.0]}
    headroom = {
        "eval_seeds": SEEDS,
        "presets": {ENV_ID: {"reference": "random-k", "controllers": {"random-k": reference}}},
    }
    (tmp_path / "headroom.json").write_text(json.dumps(headroom))
    plain = _run(tmp_path, "plain")
    assert plain["seeds"] == SEEDS and len(set(plain["per_seed"])) > 1
    first = _run(tmp_path, "first", "--skip-seeds", "10003")
    assert first["per_seed"] == plain["per_seed"][:3]
    resumed = _run(tmp_path, "resumed", "--workers", "2", "--reuse", str(tmp_path / "first.json"))
    assert resumed["per_seed"] == plain["per_seed"]  # 3 seeds reused, the 4th run in a worker
    assert resumed["saving_vs_reference"] == plain["saving_vs_reference"]
    first["per_seed"][0] = 12345.0  # a reused seed is read, not run again
    (tmp_path / "first.json").write_text(json.dumps(first))
    marked = _run(tmp_path, "marked", "--reuse", str(tmp_path / "first.json"))
    assert marked["per_seed"] == [12345.0, *plain["per_seed"][1:]]
    command = [sys.executable, str(SCRIPT), str(tmp_path / "headroom.json"), "--env", ENV_ID, "--label", "another"]
    other = subprocess.run([*command, "--reuse", str(tmp_path / "first.json")], capture_output=True, text=True)
    assert other.returncode != 0 and "--reuse" in other.stderr and "not this run's" in other.stderr
