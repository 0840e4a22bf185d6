"""SB3 training: every algorithm on a tiny preset it supports, run directories, save/load, hyperparameters."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import yaml

import qflgym.envs  # noqa: F401
from qflgym.agents.controllers import make_controller
from qflgym.agents.controllers.sb3 import SB3Controller
from qflgym.agents.training.algorithms import ALGORITHMS, UnsupportedActionSpaceError, check_action_space, supporting
from qflgym.agents.training.hyperparams import default_hyperparams_path, load_hyperparams, parse_schedule, resolve
from qflgym.agents.training.sb3 import EVAL_SEED_OFFSET, train
from qflgym.config import ConfigError

#: A tiny preset each algorithm supports, and the overrides that make 64 steps train something.
SMOKE = {
    "ppo": ("QFL/ClientSelection-Tiny-v0", {"n_steps": 32, "batch_size": 16, "n_epochs": 1}),
    "a2c": ("QFL/FullControl-Tiny-v0", {"n_steps": 8}),
    "dqn": ("QFL/RoundTermination-Tiny-v0", {"learning_starts": 16, "batch_size": 8, "buffer_size": 256}),
    "sac": ("QFL/StepSize-Tiny-v0", {"learning_starts": 16, "batch_size": 8, "buffer_size": 256}),
    "td3": ("QFL/StepSize-Tiny-v0", {"learning_starts": 16, "batch_size": 8, "buffer_size": 256}),
    "maskable-ppo": ("QFL/ClientSelection-Tiny-v0", {"n_steps": 32, "batch_size": 16, "n_epochs": 1}),
}


def _train(tmp_path, algo, **extra):
    env_id, overrides = SMOKE[algo]
    config = {
        "algo": algo,
        "env": env_id,
        "timesteps": 64,
        "seed": 0,
        "n_envs": 1,
        "env_config": {"federation_seed": 0},  # one federation: cheap resets
        "out": str(tmp_path),
        "run_name": algo,
        "overrides": {**overrides, "policy_kwargs": "dict(net_arch=[16])"},
        "eval_freq": 0,
        "save_freq": 0,
        "progress": False,
        "tensorboard": False,
        **extra,
    }
    return train(config, argv=["qflgym", "train", "--algo", algo])


def test_every_algorithm_has_a_smoke_preset():
    assert set(SMOKE) == set(ALGORITHMS.names())


@pytest.mark.parametrize("algo", sorted(SMOKE))
def test_smoke_training_and_save_load_gives_identical_predictions(tmp_path, algo):
    result = _train(tmp_path, algo)
    assert result.timesteps >= 64 and result.model_path.is_file()
    env = gym.make(SMOKE[algo][0], config={"federation_seed": 0})
    obs = np.stack([env.reset(seed=s)[0] for s in range(4)])
    loaded = SB3Controller.load(result.run_dir)  # algo read from args.yml
    again = make_controller("sb3", env, path=str(result.model_path))
    masks = np.stack([env.unwrapped.action_masks()] * 4) if algo == "maskable-ppo" else None
    a1, _ = loaded.predict(obs, deterministic=True, action_masks=masks)
    a2, _ = again.predict(obs, deterministic=True, action_masks=masks)
    cls = ALGORITHMS.get(algo).load_class()
    a3, _ = cls.load(str(result.model_path)).predict(
        obs, deterministic=True, **({"action_masks": masks} if masks is not None else {})
    )
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(a1, a3)
    assert a1.shape[0] == 4
    for action in a1:
        env.unwrapped.action_codec.decode(action)  # a valid action
    env.close()


def test_run_directory_holds_config_command_models_and_logs(tmp_path):
    result = _train(tmp_path, "ppo", eval_freq=32, eval_episodes=1, save_freq=32, tensorboard=True)
    run = result.run_dir
    for name in (
        "model.zip",
        "best_model.zip",
        "config.yaml",
        "run.json",
        "hyperparams.yml",
        "command.txt",
        "metrics.json",
        "evaluations.npz",
    ):
        assert (run / name).is_file(), name
    assert list((run / "checkpoints").glob("model_*_steps.zip"))
    assert list((run / "tb").rglob("events.out.tfevents.*"))
    zoo = yaml.safe_load((run / "hyperparams.yml").read_text())
    hp = zoo["QFL/ClientSelection-Tiny-v0"]
    assert hp["n_steps"] == 32 and hp["n_timesteps"] == 64 and hp["policy_kwargs"] == "dict(net_arch=[16])"
    args = yaml.safe_load((run / "config.yaml").read_text())
    assert args["algo"] == "ppo" and args["train_env_seeds"] == [0] and args["eval_env_seed"] == EVAL_SEED_OFFSET
    assert args["resolved_hyperparams"] == hp
    assert "stable-baselines3" in json.loads((run / "run.json").read_text())["versions"]
    assert (run / "command.txt").read_text().strip() == "qflgym train --algo ppo"
    assert result.best_model_path == run / "best_model.zip"


def test_unsupported_action_space_names_the_algorithms_that_do():
    env = gym.make("QFL/ClientSelection-Tiny-v0")
    with pytest.raises(UnsupportedActionSpaceError, match=r"algorithms that do: a2c, maskable-ppo, ppo"):
        check_action_space("dqn", env.action_space, "QFL/ClientSelection-Tiny-v0")
    assert supporting(gym.make("QFL/StepSize-Tiny-v0").action_space) == ["a2c", "ppo", "sac", "td3"]
    assert supporting(gym.make("QFL/RoundTermination-Tiny-v0").action_space) == [
        "a2c",
        "dqn",
        "maskable-ppo",
        "ppo",
    ]
    with pytest.raises(KeyError, match="unknown algorithm 'nope'; allowed: a2c, dqn"):
        check_action_space("nope", env.action_space)
    env.close()


def test_train_rejects_unsupported_space_before_training(tmp_path):
    with pytest.raises(UnsupportedActionSpaceError, match="sac"):
        train({"algo": "sac", "env": "QFL/RoundTermination-Tiny-v0", "timesteps": 8, "out": str(tmp_path)})
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- hyperparams
def test_packaged_hyperparams_are_valid_for_their_algorithms():
    import qflgym.envs as envs

    for algo in ALGORITHMS.names():
        data = yaml.safe_load(default_hyperparams_path(algo).read_text())
        cls = ALGORITHMS.get(algo).load_class()
        for env_id, hp in data.items():
            assert env_id in envs.ENV_IDS, env_id
            trainer, kwargs = resolve(cls, hp, f"{algo}.yml")
            assert trainer["n_timesteps"] >= 1 and "policy_kwargs" in kwargs


def test_schedules_and_policy_kwargs_follow_the_zoo():
    from stable_baselines3 import PPO

    lin = parse_schedule("lin_3e-4")
    assert lin(1.0) == pytest.approx(3e-4) and lin(0.5) == pytest.approx(1.5e-4) and lin(0.0) == 0.0
    assert parse_schedule(0.1) == 0.1
    with pytest.raises(ConfigError, match="bad schedule"):
        parse_schedule("lin_x")
    trainer, kwargs = resolve(
        PPO,
        {
            "n_timesteps": 1e4,
            "policy": "MlpPolicy",
            "learning_rate": "lin_1e-3",
            "policy_kwargs": "dict(net_arch=[8], activation_fn=nn.ReLU)",
        },
    )
    import torch.nn as nn

    assert trainer == {"n_timesteps": 10_000, "policy": "MlpPolicy"}
    assert kwargs["policy_kwargs"] == {"net_arch": [8], "activation_fn": nn.ReLU}
    with pytest.raises(
        ConfigError, match=r"unknown hyperparameter 'n_step' for PPO \(did you mean 'n_steps'\?\); allowed: .*n_steps"
    ):
        resolve(PPO, {"n_step": 3})
    with pytest.raises(ConfigError, match="may only use"):
        resolve(PPO, {"policy_kwargs": "__import__('os')"})
    with pytest.raises(ConfigError, match="rl_zoo3"):
        resolve(PPO, {"frame_stack": 4})


def test_load_hyperparams_by_env_id(tmp_path):
    path = tmp_path / "hp.yml"
    path.write_text("QFL/ClientSelection-v0:\n  n_steps: 8\n")
    assert load_hyperparams(path, "QFL/ClientSelection-v0") == ({"n_steps": 8}, True)
    assert load_hyperparams(path, "QFL/StepSize-v0") == ({}, False)
    with pytest.raises(FileNotFoundError, match="hyperparameter file not found"):
        load_hyperparams(tmp_path / "missing.yml", "x")


def test_maskable_controller_never_selects_masked_clients(tmp_path):
    result = _train(tmp_path, "maskable-ppo")
    env = gym.make("QFL/ClientSelection-Tiny-v0", config={"federation_seed": 0})
    ctrl = make_controller("sb3", env, path=str(result.run_dir))
    assert ctrl.uses_action_masks
    obs, _ = env.reset(seed=0)
    n = env.unwrapped.n_clients
    masks = np.ones((n, 2), dtype=bool)
    masks[:, 1] = False  # nobody may be selected
    for _ in range(5):
        action, _ = ctrl.predict(obs, deterministic=False, action_masks=masks.reshape(-1))
        assert not np.any(action)
    env.close()


def test_parse_overrides_reads_yaml_values():
    from qflgym.agents.training.hyperparams import parse_overrides

    assert parse_overrides(["n_steps=32", "learning_rate:lin_1e-3", "policy_kwargs=dict(net_arch=[16])"]) == {
        "n_steps": 32,
        "learning_rate": "lin_1e-3",
        "policy_kwargs": "dict(net_arch=[16])",
    }
    assert parse_overrides(["learning_rate=1e-4", "clip_range=2E+1", "name=e5", "x=1.5"]) == {
        "learning_rate": 1e-4,
        "clip_range": 20.0,
        "name": "e5",
        "x": 1.5,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["n_steps"])


def test_batched_vec_env_trains_maskable_ppo(tmp_path):
    """``--vec-env batched``: the envs' rounds run in shared simulator calls; MaskablePPO reads their masks."""
    result = _train(tmp_path, "maskable-ppo", n_envs=4, vec_env="batched")
    assert (result.run_dir / "model.zip").exists()
