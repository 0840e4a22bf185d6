"""Snapshots, pickling and vectorization of the QFL envs."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from qflgym.envs import ENV_IDS

TINY_IDS = [i for i in ENV_IDS if "-Tiny-" in i]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _same_step(a: tuple, b: tuple) -> None:
    obs_a, reward_a, term_a, trunc_a, info_a = a
    obs_b, reward_b, term_b, trunc_b, info_b = b
    np.testing.assert_array_equal(obs_a, obs_b)
    assert (reward_a, term_a, trunc_a) == (reward_b, term_b, trunc_b)
    assert info_a == info_b


def _go_on(env: gym.Env) -> object:
    """A random action that does not stop the episode."""
    if isinstance(env.action_space, gym.spaces.Discrete):
        return 0
    action = env.action_space.sample()
    if isinstance(env.action_space, gym.spaces.MultiDiscrete):
        action[-1] = 0
    return action


def _advance(env: gym.Env, n: int) -> None:
    for _ in range(n):
        *_, terminated, truncated, _ = env.step(_go_on(env))
        assert not (terminated or truncated)


@pytest.mark.parametrize("env_id", [*TINY_IDS, "QFL/StepSize-v0"])
def test_get_state_set_state_gives_the_same_next_step(env_id):
    # no target keeps the episode going; StepSize's random-k selection rule draws from np_random
    config = {"target_accuracy": None}
    env = gym.make(env_id, config=config)
    env.reset(seed=5)
    env.action_space.seed(5)
    _advance(env, 3)
    state = env.unwrapped.get_state()
    action = _go_on(env)
    first = env.step(action)
    second = env.step(action)
    env.unwrapped.set_state(state)
    _same_step(first, env.step(action))
    _same_step(second, env.step(action))
    # a fresh instance restores the snapshot too (it rebuilds the federation from the seed)
    other = gym.make(env_id, config=config)
    other.reset(seed=123)
    other.unwrapped.set_state(state)
    _same_step(first, other.step(action))
    with pytest.raises(ValueError, match="state was taken from"):
        gym.make("QFL/FullControl-Tiny-v0" if "Full" not in env_id else "QFL/StepSize-Tiny-v0").unwrapped.set_state(
            state
        )


@pytest.mark.parametrize("env_id", TINY_IDS)
def test_envs_pickle_mid_episode(env_id):
    env = gym.make(env_id, config={"target_accuracy": None})
    env.reset(seed=9)
    env.step(_go_on(env))
    clone = pickle.loads(pickle.dumps(env))
    action = _go_on(env)
    _same_step(env.step(action), clone.step(action))


def test_subproc_vec_env_matches_dummy_vec_env():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    env_id = "QFL/ClientSelection-Tiny-v0"
    sub = make_vec_env(env_id, n_envs=2, seed=3, vec_env_cls=SubprocVecEnv, vec_env_kwargs={"start_method": "fork"})
    dummy = make_vec_env(env_id, n_envs=2, seed=3, vec_env_cls=DummyVecEnv)
    try:
        np.testing.assert_array_equal(sub.reset(), dummy.reset())
        rng = np.random.default_rng(0)
        for _ in range(10):
            actions = rng.integers(0, 2, size=(2, 4))
            o1, r1, d1, _ = sub.step(actions)
            o2, r2, d2, _ = dummy.step(actions)
            np.testing.assert_array_equal(o1, o2)
            np.testing.assert_array_equal(np.float32(r1), r2)  # DummyVecEnv buffers rewards as float32
            np.testing.assert_array_equal(d1, d2)
        masks = np.stack(sub.env_method("action_masks"))
        assert masks.shape == (2, 8)
    finally:
        sub.close()
        dummy.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gym_make_vec(mode):
    envs = gym.make_vec("QFL/StepSize-Tiny-v0", num_envs=2, vectorization_mode=mode)
    try:
        obs, info = envs.reset(seed=[1, 2])
        assert obs.shape == (2, *envs.single_observation_space.shape)
        envs.action_space.seed(0)
        for _ in range(10):
            obs, reward, _, _, info = envs.step(envs.action_space.sample())
            assert np.isfinite(obs).all() and np.isfinite(reward).all()
        assert "rewards" in info and "accuracy_gain" in info["rewards"]
    finally:
        envs.close()
