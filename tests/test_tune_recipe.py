"""benchmarks/tune_recipe.py: the packaged recipe is trial 0, every trial is scored on the validation seeds."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import yaml

from qflgym.config import preset_path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tune_recipe.py"
ENV_ID = "QFL/FullControl-Tiny-v1"


def test_ppo_search_enqueues_the_packaged_recipe_and_scores_every_trial(tmp_path):
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "tune.json"
    argv = ["ppo", "--env", ENV_ID, "--timesteps", "128", "--n-envs", "4", "--trials", "2"]
    assert main([*argv, "--validation-start", "60000", "--validation-seeds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    entry = yaml.safe_load(preset_path("agents", "equivariant-ppo").read_text())[ENV_ID]
    first, second = result["trials"]
    # trial 0 is the packaged entry, with n_steps scaled so that a rollout holds as many steps on 4 envs
    assert first["params"]["n_steps"] == entry["n_steps"] * entry["n_envs"] // 4
    assert first["params"]["batch_size"] == entry["batch_size"]
    assert second["params"] != first["params"]  # the sampler's own draw
    assert result["validation_seeds"] == [60000, 60001]
    for trial in (first, second):
        assert len(trial["per_seed"]) == 2 and trial["mean"] > 0
    assert result["best"]["mean"] == min(first["mean"], second["mean"])
    assert any(p.is_dir() for p in tmp_path.iterdir())  # the run record (command, config) beside the result
