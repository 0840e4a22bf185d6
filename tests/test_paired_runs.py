"""benchmarks/paired_runs.py: per-seed pairing of saved results (hand-computed values)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "paired_runs", Path(__file__).resolve().parents[1] / "benchmarks/paired_runs.py"
)
paired_runs = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(paired_runs)


def _write(path: Path, name: str, values: list[float]) -> str:
    path.write_text(json.dumps({"controller": name, "seeds": [1, 2, 3, 4], "per_seed": values}))
    return str(path)


def test_pairs_runs_by_seed_and_counts_stalls(tmp_path, capsys):
    ref = _write(tmp_path / "a.json", "ref", [100.0, 200.0, 50.0, 100.0])
    run = _write(tmp_path / "b.json", "run", [50.0, 2000.0, 50.0, 80.0])
    assert paired_runs.main([ref, run]) == 0
    out = capsys.readouterr().out
    assert "run: mean 545.0, median 65.0, 1 stalls [2]" in out
    # savings 0.5, -9, 0, 0.2: mean -2.075; improves on seeds 1 and 4, ties on 3: (2 + 0.5) / 4
    assert "run vs ref: saving -207.5%" in out and "P(improve) 0.62" in out and "both finish on 3 seeds" in out
    short = tmp_path / "c.json"
    short.write_text(json.dumps({"controller": "short", "seeds": [1, 2, 3], "per_seed": [1.0, 2.0, 3.0]}))
    for bad in ([ref], [ref, str(short)]):
        with pytest.raises(SystemExit):
            paired_runs.main(bad)
    assert "at least two files on the same seeds" in capsys.readouterr().err
