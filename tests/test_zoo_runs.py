"""rl-baselines3-zoo run folders as models: ``qflgym eval --model`` and the ``sb3`` controller read them."""

from __future__ import annotations

import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import yaml

import qflgym.envs  # noqa: F401
from qflgym.agents.controllers import make_controller
from qflgym.agents.controllers.sb3 import find_model, infer_algo, zoo_params_dir

pytest.importorskip("rl_zoo3")

ENV = "QFL/ClientSelection-Tiny-v1"
ZOO_NAME = "QFL-ClientSelection-Tiny-v1"  # the zoo's folder name of the id


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    """A tiny PPO run of ``python -m rl_zoo3.train`` with observation normalization, no evaluation."""
    root = tmp_path_factory.mktemp("zoo")
    conf = root / "ppo.yml"
    conf.write_text(
        yaml.safe_dump(
            {ENV: {"n_timesteps": 64, "policy": "MlpPolicy", "n_steps": 32, "batch_size": 32, "normalize": True}}
        )
    )
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", "ppo", "--env", ENV, "--conf-file", str(conf)]
    command += ["--gym-packages", "qflgym.envs", "-f", str(root / "logs"), "--eval-freq", "-1", "--seed", "0"]
    subprocess.run(command, check=True, capture_output=True, cwd=root, timeout=300)
    return root / "logs" / "ppo" / f"{ZOO_NAME}_1"


def test_a_zoo_run_folder_resolves_to_its_model_algorithm_and_statistics(zoo_run):
    assert zoo_params_dir(zoo_run) == zoo_run / ZOO_NAME
    model_path = find_model(zoo_run)
    assert model_path == zoo_run / f"{ZOO_NAME}.zip"
    assert infer_algo(model_path) == "ppo"
    env = gym.make(ENV)
    controller = make_controller("sb3", env, path=str(zoo_run))
    assert controller.obs_normalizer is not None  # the zoo's <env>/vecnormalize.pkl is applied
    with (zoo_run / ZOO_NAME / "vecnormalize.pkl").open("rb") as fh:
        stats = pickle.load(fh)
    obs, _ = env.reset(seed=3)
    expected, _ = controller.model.predict(stats.normalize_obs(obs), deterministic=True)
    np.testing.assert_array_equal(controller.predict(obs, deterministic=True)[0], expected)


def test_qflgym_eval_accepts_a_zoo_run_folder(zoo_run, tmp_path):
    rows = tmp_path / "rows.json"
    command = [sys.executable, "-m", "qflgym.agents.cli", "eval", "--model", str(zoo_run), "--env", ENV]
    done = subprocess.run(
        [*command, "--episodes", "1", "--json", str(rows)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(rows.read_text())[0]["rounds"] >= 1
