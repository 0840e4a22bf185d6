"""Batched federations: the vector env against single envs (bit for bit), autoreset, Gymnasium's semantics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.vector import AutoresetMode

import qflgym.envs  # noqa: F401
from qflgym.envs.vector import QFLVectorEnv

#: Small federations and short episodes: stops and the target end episodes of sub-envs at different steps.
CONFIG = {"federation": {"clients": {"n_clients": 4}}, "round_budget": 4, "target_accuracy": 0.6}
ENV_ID = "QFL/FullControl-v0"


def _actions(space: gym.spaces.Space, n_envs: int, n_steps: int, seed: int) -> list[np.ndarray]:
    """Random batched actions; every sub-env stops with probability 0.2 (the last entry of FullControl)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_steps):
        a = np.stack([space.sample() for _ in range(n_envs)])
        a[:, -1] = rng.random(n_envs) < 0.2
        out.append(a)
    return out


def _vector(n_envs: int, env_id: str = ENV_ID, **kwargs: object) -> QFLVectorEnv:
    env = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", config=CONFIG, **kwargs)
    assert isinstance(env, QFLVectorEnv)
    return env


def test_make_vec_uses_the_registered_vector_entry_point() -> None:
    env = _vector(3)
    assert env.num_envs == 3 and env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert env.observation_space.shape == (3, *env.single_observation_space.shape)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs) and info["_round"].all()


@pytest.mark.parametrize("env_id", [ENV_ID, "QFL/FullControl-v1"])  # v1: every client has finite shots
def test_sub_envs_match_single_envs_bit_for_bit_with_resets_at_different_times(env_id: str) -> None:
    n_envs, n_steps = 3, 14
    vec = _vector(n_envs, env_id)
    single_space = vec.single_action_space
    single_space.seed(0)
    actions = _actions(single_space, n_envs, n_steps, seed=0)
    obs, _ = vec.reset(seed=10)
    vec_steps = [vec.step(a) for a in actions]
    ends = np.array([s[2] | s[3] for s in vec_steps])
    assert ends.any(axis=0).all() and len({tuple(np.flatnonzero(col)) for col in ends.T}) > 1  # resets differ
    for i in range(n_envs):
        env = gym.make(env_id, config=CONFIG)
        single_obs, _ = env.reset(seed=10 + i)
        assert data_equivalence(single_obs, obs[i], exact=True)
        done = False
        for t, action in enumerate(actions):
            if done:  # NEXT_STEP autoreset: the vector env resets this sub-env now and ignores its action
                single_obs, _ = env.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                single_obs, reward, terminated, truncated, _ = env.step(action[i])
            v_obs, v_reward, v_term, v_trunc, _ = vec_steps[t]
            assert data_equivalence(single_obs, v_obs[i], exact=True), (i, t)
            assert (reward, terminated, truncated) == (v_reward[i], v_term[i], v_trunc[i]), (i, t)
            done = terminated or truncated


def test_vector_env_matches_gymnasium_sync_vector_env() -> None:
    """Gymnasium's reference vector env over the same single envs: identical outputs and infos."""
    n_envs = 2
    vec = _vector(n_envs)
    sync = gym.make_vec(ENV_ID, num_envs=n_envs, vectorization_mode="sync", config=CONFIG)
    vec.single_action_space.seed(3)
    actions = _actions(vec.single_action_space, n_envs, 10, seed=3)
    np.testing.assert_equal(vec.reset(seed=5), sync.reset(seed=5))  # NaN (no test accuracy) equals NaN
    for a in actions:
        ours, theirs = vec.step(a), sync.step(a)
        np.testing.assert_equal(ours, theirs)
        assert all(data_equivalence(x, y, exact=True) for x, y in zip(ours[:4], theirs[:4], strict=True))


def test_same_step_autoreset_reports_the_final_observation() -> None:
    vec = _vector(2, autoreset_mode=AutoresetMode.SAME_STEP)
    vec.reset(seed=0)
    stop = np.stack([vec.single_action_space.sample() for _ in range(2)])
    stop[:, -1] = [1, 0]
    _obs, _reward, terminated, _truncated, info = vec.step(stop)
    assert terminated.tolist() == [True, False] and info["_final_obs"].tolist() == [True, False]
    assert info["final_info"]["stopped"][0] and vec.single_observation_space.contains(info["final_obs"][0])
    assert info["round"][0] == 0 and info["round"][1] == 1  # sub-env 0 was reset within the step


def test_reset_mask_and_bad_arguments() -> None:
    vec = _vector(2)
    _obs, _ = vec.reset(seed=0)
    vec.step(np.stack([vec.single_action_space.sample() for _ in range(2)]))
    _obs2, info = vec.reset(seed=[None, 7], options={"reset_mask": np.array([False, True])})
    assert info["_round"].tolist() == [False, True]
    with pytest.raises(ValueError, match="reset_mask"):
        vec.reset(options={"reset_mask": [True, False]})
    with pytest.raises(ValueError, match="num_envs"):
        QFLVectorEnv("qflgym.envs.full_control:FullControlEnv", 0)
    with pytest.raises(ValueError, match="seed"):
        vec.reset(seed=[1, 2, 3])


@pytest.mark.parametrize("env_id", ["QFL/ClientSelection-v0", "QFL/FullControl-Tiny-v0"])
def test_single_envs_pass_check_env(env_id: str) -> None:
    check_env(gym.make(env_id, config={"round_budget": 3}).unwrapped, skip_render_check=True)


def test_vector_action_masks_stack_the_sub_envs() -> None:
    vec = _vector(2)
    vec.reset(seed=0)
    masks = vec.action_masks()
    assert masks.shape[0] == 2 and np.array_equal(masks[1], vec.envs[1].action_masks())


@pytest.mark.parametrize("env_id", [ENV_ID, "QFL/FullControl-v1"])
def test_sb3_batched_vec_env_matches_dummy_vec_env(env_id: str) -> None:
    """SB3's conventions (same-step reset, terminal_observation) and the DummyVecEnv's numbers, bit for bit.

    The v1 id checks that the registration's presets reach the sub-envs (its federation is not v0's).
    """
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    from qflgym.envs.sb3_vec_env import BatchedVecEnv

    batched = BatchedVecEnv(env_id, 2, CONFIG)
    dummy = make_vec_env(env_id, n_envs=2, env_kwargs={"config": CONFIG}, vec_env_cls=DummyVecEnv)
    assert batched.observation_space == dummy.observation_space
    batched.seed(4)
    dummy.seed(4)
    np.testing.assert_equal(batched.reset(), dummy.reset())
    space = batched.action_space
    space.seed(0)
    actions = _actions(space, 2, 12, seed=1)
    for a in actions:
        obs, rewards, dones, infos = batched.step(a)
        obs_d, rewards_d, dones_d, infos_d = dummy.step(a)
        np.testing.assert_equal((obs, rewards, dones), (obs_d, rewards_d, dones_d))
        for info, info_d in zip(infos, infos_d, strict=True):
            assert info["TimeLimit.truncated"] == info_d["TimeLimit.truncated"]
            if "terminal_observation" in info_d:
                np.testing.assert_equal(info["terminal_observation"], info_d["terminal_observation"])
    assert len(batched.env_method("action_masks")) == 2 and batched.env_is_wrapped(gym.Wrapper) == [False, False]
