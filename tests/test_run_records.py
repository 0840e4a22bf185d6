"""Run records of benchmark results (qflgym/runs.py)."""

from __future__ import annotations

import argparse
import json

import yaml

from qflgym.runs import write_result_record


def test_results_in_one_folder_keep_their_own_records(tmp_path) -> None:
    for name, presets in (("a", ["QFL/StepSize-v1"]), ("b", ["QFL/FullControl-v1"])):
        result = tmp_path / f"{name}.json"
        args = argparse.Namespace(json=result, presets=presets)
        run_dir = write_result_record(result, args, ["python", "bench.py", "--json", str(result)])
        assert run_dir == tmp_path / name
    for name, preset in (("a", "QFL/StepSize-v1"), ("b", "QFL/FullControl-v1")):
        config = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        assert config["args"]["presets"] == [preset] and config["args"]["json"] == str(tmp_path / f"{name}.json")
        assert (tmp_path / name / "command.txt").read_text().strip().endswith(f"{name}.json")
        assert "numpy" in json.loads((tmp_path / name / "run.json").read_text())["versions"]
