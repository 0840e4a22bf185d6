"""Behaviour cloning and DAgger (agents/training/imitation.py) and the ``pretrain`` option of ``train``."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import PPO

import qflgym.envs  # noqa: F401
from qflgym.agents.controllers import make_controller
from qflgym.agents.policies import resolve_policy
from qflgym.agents.training.imitation import (
    DEMO_SEED_OFFSET,
    PretrainConfig,
    behaviour_clone,
    collect_demonstrations,
    pretrain,
)
from qflgym.agents.training.sb3 import train
from qflgym.config import ConfigError

ENV = "QFL/ClientSelection-Tiny-v1"
TEACHER = {"teacher": "cost-aware", "teacher_kwargs": {"k": 2}}
POLICY_KWARGS = {"pooling": "mean_max", "embed_dim": 16, "n_client_features": 23, "n_global_features": 13}


def _model(env: gym.Env, seed: int = 0) -> PPO:
    return PPO(resolve_policy("EquivariantPolicy", PPO), env, seed=seed, n_steps=16, policy_kwargs=POLICY_KWARGS)


def test_demonstrations_are_the_teachers_actions_and_discounted_returns() -> None:
    env = gym.make(ENV)
    cfg = PretrainConfig(**TEACHER, episodes=2)
    demos = collect_demonstrations(env, cfg, [5, 6], gamma=0.9)
    teacher = make_controller("cost-aware", env, seed=5, k=2)
    obs, _ = env.reset(seed=5)
    actions, rewards = [], []
    start = np.ones(1, dtype=bool)
    while True:
        action, _ = teacher.predict(obs, episode_start=start, deterministic=True)
        start[:] = False
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    n = len(actions)
    np.testing.assert_array_equal(demos.actions[:n], np.stack(actions))
    assert demos.returns[0] == pytest.approx(sum(r * 0.9**t for t, r in enumerate(rewards)), rel=1e-6)
    assert demos.returns[n - 1] == pytest.approx(rewards[-1], rel=1e-6)
    assert demos.objectives[0] == pytest.approx(info["objective"])
    assert len(demos.objectives) == 2 and demos.observations.shape == (len(demos.returns), *env.observation_space.shape)


def test_dagger_labels_the_actors_states_with_the_teachers_actions() -> None:
    env = gym.make(ENV)
    cfg = PretrainConfig(**TEACHER)
    demos = collect_demonstrations(env, cfg, [3], gamma=0.99, actor=make_controller("random-k", env, seed=3, k=1))
    teacher = make_controller("cost-aware", env, seed=3, k=2)
    starts = [np.array([i == 0]) for i in range(len(demos.actions))]
    labels = [
        teacher.predict(o, episode_start=s, deterministic=True)[0]
        for o, s in zip(demos.observations, starts, strict=True)
    ]
    np.testing.assert_array_equal(demos.actions, np.stack(labels))
    alone = collect_demonstrations(
        env, PretrainConfig(teacher="random-k", teacher_kwargs={"k": 1}), [3], gamma=0.99
    )  # the same actor, acting alone: the same states
    np.testing.assert_array_equal(demos.observations, alone.observations)
    np.testing.assert_allclose(demos.returns, alone.returns)
    assert not np.array_equal(demos.actions, alone.actions)


def test_cloning_fits_the_teacher() -> None:
    env = gym.make(ENV)
    cfg = PretrainConfig(**TEACHER, episodes=6, epochs=150, batch_size=32, learning_rate=3e-3)
    demos = collect_demonstrations(env, cfg, list(range(6)), gamma=0.99)
    model = _model(env)
    log_std = model.policy.log_std.detach().clone()
    before = (np.sign(model.predict(demos.observations, deterministic=True)[0]) == demos.actions).all(axis=1).mean()
    result = behaviour_clone(model.policy, demos, cfg, seed=0)
    assert result.last_loss < 0.8 * result.first_loss
    assert before < 0.5 <= 0.9 <= result.agreement
    assert bool((model.policy.log_std.detach() == log_std).all())  # train_log_std=False keeps PPO's exploration


def test_cut_episodes_record_the_same_first_steps_and_no_return() -> None:
    env = gym.make(ENV)
    cfg = PretrainConfig(**TEACHER)
    whole = collect_demonstrations(env, cfg, [5, 6], gamma=0.9)
    cut = collect_demonstrations(env, cfg, [5, 6], gamma=0.9, max_steps=2)
    first = int(np.flatnonzero(np.isclose(whole.observations[:, -1], 0.0))[1])  # episode 6 starts at cost 0
    assert first > 2 and len(cut.actions) == 4
    np.testing.assert_array_equal(cut.actions, np.concatenate([whole.actions[:2], whole.actions[first : first + 2]]))
    assert np.isnan(cut.returns).all() and np.isnan(cut.objectives).all()
    model = _model(env)
    values_before = [p.detach().clone() for p in model.policy.value_net.parameters()]
    result = behaviour_clone(model.policy, cut, cfg.model_copy(update={"epochs": 3}), seed=0)
    assert np.isfinite(result.last_loss)
    assert all(torch.equal(a, b) for a, b in zip(values_before, model.policy.value_net.parameters(), strict=True))


def test_pretrain_runs_dagger_rounds_on_fresh_seeds() -> None:
    env = gym.make(ENV)
    cfg = PretrainConfig(**TEACHER, episodes=2, epochs=2, dagger_iterations=2, dagger_episodes=1)
    model = _model(env)
    result = pretrain(model, env, cfg, seed=7)
    assert len(result.dagger_objectives) == 2 and np.isfinite(result.teacher_objective)
    expected = collect_demonstrations(
        env, cfg, [7 + DEMO_SEED_OFFSET, 7 + DEMO_SEED_OFFSET + 1], gamma=model.gamma
    ).objectives.mean()
    assert result.teacher_objective == pytest.approx(expected)
    assert result.steps > 0


@pytest.mark.parametrize(("dagger_epochs", "one_pass"), [(1, True), (None, False)])
def test_dagger_refits_run_dagger_epochs_passes(dagger_epochs: int | None, one_pass: bool) -> None:
    env = gym.make(ENV)
    cfg = PretrainConfig(**TEACHER, episodes=2, epochs=3, dagger_iterations=1, dagger_episodes=1)
    result = pretrain(_model(env), env, cfg.model_copy(update={"dagger_epochs": dagger_epochs}), seed=7)
    assert (result.clone.first_loss == result.clone.last_loss) is one_pass  # the last fit is the refit


def _clone_only(tmp_path, hyperparams: str, pretrain: dict):
    """``train`` with ``timesteps=0``: the cloned policy is the run's model."""
    settings = {"timesteps": 0, "out": str(tmp_path), "eval_freq": 0, "save_freq": 0, "tensorboard": False}
    run = {"algo": "ppo", "env": ENV, "hyperparams": hyperparams, "progress": False, "pretrain": pretrain}
    return train({**run, **settings})


def test_train_with_pretrain_writes_the_cloned_model_and_its_figures(tmp_path) -> None:
    hp = tmp_path / "hp.yml"
    hp.write_text(
        f"{ENV}:\n  policy: EquivariantPolicy\n  n_steps: 16\n  batch_size: 16\n"
        f'  policy_kwargs: "dict(**{POLICY_KWARGS!r})"\n'
    )
    result = _clone_only(tmp_path, str(hp), {**TEACHER, "episodes": 2, "epochs": 2})
    assert (result.run_dir / "pretrained_model.zip").is_file()
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["pretrain"]["demonstration_steps"] > 0 and 0 <= metrics["pretrain"]["agreement"] <= 1
    assert metrics["timesteps"] == 0  # timesteps=0: the cloned policy is the final model
    obs = gym.make(ENV).reset(seed=1)[0]
    final, cloned = (
        PPO.load(result.run_dir / name).predict(obs, deterministic=True)[0]
        for name in ("model.zip", "pretrained_model.zip")
    )
    np.testing.assert_array_equal(final, cloned)
    recorded = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert recorded["pretrain"]["teacher"] == "cost-aware"


@pytest.mark.parametrize(("algo", "overrides"), [("dqn", {}), ("ppo", {"normalize": True})])
def test_pretrain_rejects_what_it_cannot_clone(tmp_path, algo: str, overrides: dict) -> None:
    env = "QFL/RoundTermination-Tiny-v1" if algo == "dqn" else ENV
    with pytest.raises(ConfigError, match=r"pretrain: .*allowed: ppo, a2c or maskable-ppo"):
        train(
            {
                "algo": algo,
                "env": env,
                "timesteps": 16,
                "out": str(tmp_path),
                "overrides": overrides,
                "progress": False,
                "pretrain": TEACHER,
            }
        )


def test_zero_timesteps_needs_pretrain(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"no training budget: pass timesteps \(0 only with pretrain\)"):
        train({"algo": "ppo", "env": ENV, "timesteps": 0, "out": str(tmp_path), "progress": False})


def test_pretrain_config_names_bad_fields() -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        PretrainConfig(teacher="cost-aware", learning_rate=float("nan"))
    with pytest.raises(ValueError, match="dagger_iterations"):
        PretrainConfig(teacher="cost-aware", dagger_iterations=-1)
    with pytest.raises(ValueError, match="dagger_epochs"):
        PretrainConfig(teacher="cost-aware", dagger_epochs=0)


def test_the_packaged_clone_recipe_trains_a_fixed_size_cohort_policy(tmp_path) -> None:
    from qflgym.config import preset_path

    recipe = yaml.safe_load(preset_path("agents", "pretrain-cost-aware").read_text())
    assert PretrainConfig(**recipe).episode_steps == 8  # the packaged recipe validates
    small = {"episodes": 3, "epochs": 2, "dagger_iterations": 1, "dagger_episodes": 1}
    result = _clone_only(tmp_path, str(preset_path("agents", "equivariant-clone")), {**recipe, **small})
    env = gym.make(ENV)
    model = PPO.load(result.run_dir / "model.zip")
    for seed in (1, 2, 3):
        action, _ = model.predict(env.reset(seed=seed)[0], deterministic=True)
        assert int((action > 0).sum()) == 2  # cohort_size=2 in the Tiny entry: exactly two clients train


def test_listwise_cloning_ranks_the_teachers_clients_first() -> None:
    env = gym.make(ENV)
    cfg = PretrainConfig(**TEACHER, episodes=6, epochs=150, batch_size=32, learning_rate=3e-3, loss="listwise")
    demos = collect_demonstrations(env, cfg, list(range(6)), gamma=0.99)
    model = _model(env)
    result = behaviour_clone(model.policy, demos, cfg, seed=0)
    assert result.last_loss < 0.5 * result.first_loss
    with torch.no_grad():  # the score means (predict clips them to the Box, which would tie the top ones)
        scores = model.policy.get_distribution(torch.as_tensor(demos.observations)).distribution.mean.numpy()
    picked = demos.actions > 0
    k = int(picked.sum(axis=1).max())
    top = np.argsort(-scores, axis=1)[:, :k]
    ranked_first = np.mean([set(np.flatnonzero(p)) == set(t[: p.sum()]) for p, t in zip(picked, top, strict=True)])
    assert ranked_first >= 0.9


def test_listwise_cloning_needs_client_scores() -> None:
    env = gym.make("QFL/RoundTermination-Tiny-v1")
    model = PPO("MlpPolicy", env, n_steps=16)
    demos = collect_demonstrations(env, PretrainConfig(teacher="fixed-round"), [0], gamma=0.99, max_steps=2)
    with pytest.raises(ConfigError, match=r"loss=listwise needs a top-k action of client scores.*allowed: loss=like"):
        behaviour_clone(model.policy, demos, PretrainConfig(teacher="fixed-round", loss="listwise"), seed=0)
