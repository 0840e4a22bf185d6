"""benchmarks/validate_temperature.py: a sampled ranker's temperature chosen on validation seeds (tiny model)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

SPEC = importlib.util.spec_from_file_location(
    "validate_temperature", Path(__file__).resolve().parents[1] / "benchmarks/validate_temperature.py"
)
validate_temperature = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(validate_temperature)

ENV = "QFL/ClientSelection-Tiny-v1"


def test_chooses_the_temperature_with_the_lowest_mean_objective(tmp_path, capsys):
    from qflgym.agents.llm.train.sft_config import LLMSFTConfig
    from qflgym.agents.llm.train.sft_trainer import LLMSFTTrainer

    cfg = LLMSFTConfig(
        env_id=ENV, teacher="cost-aware", teacher_kwargs={"k": 2}, head="rank", cohort_size=2, episodes=2,
        episode_steps=3, max_steps=2, batch_size=2, torch_threads=1, out=str(tmp_path), run_name="r", progress=False,
    )  # fmt: skip
    policy = LLMSFTTrainer(cfg).train().run_dir / "policy"
    out = tmp_path / "t.json"
    args = ["--env", ENV, "--path", str(policy), "--seeds", "0", "2", "--quantize", "none", "--workers", "1"]
    assert validate_temperature.main([*args, "--temperatures", "0.05", "50", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1] and [r["temperature"] for r in result["results"]] == [0.05, 50.0]
    for r in result["results"]:
        assert len(r["objectives"]) == 2 and r["mean"] == pytest.approx(sum(r["objectives"]) / 2)
    assert result["chosen"] == min(result["results"], key=lambda r: r["mean"])["temperature"]
    assert f"chosen: T={result['chosen']:g}" in capsys.readouterr().out
    assert (tmp_path / "t" / "command.txt").exists()  # the resolved command next to the result
    for bad in (["--temperatures", "0"], ["--temperatures", "nan"], ["--temperatures", "1", "--seeds", "3", "3"]):
        with pytest.raises(SystemExit):
            validate_temperature.main([*args, *bad])
    assert "--temperatures must be finite and > 0" in capsys.readouterr().err
