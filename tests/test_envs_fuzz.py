"""Random and extreme actions (hypothesis) never produce NaN/inf or a crash (tiny presets, ~2000 actions)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from qflgym.envs import ENV_IDS

TINY_IDS = [i for i in ENV_IDS if "-Tiny-" in i]
EXAMPLES = 25  # x 10..30 actions x 8 envs ~ 4000 actions
N = 4

_extreme = st.sampled_from([-1.0, 1.0, 0.0, -0.0, 1e-38, -1e-38, 0.999999, -0.999999])
_unit = st.floats(-1.0, 1.0, allow_nan=False, width=32) | _extreme
_ENVS: dict[str, gym.Env] = {}


def _actions(env_id: str) -> st.SearchStrategy:
    space = _env(env_id).action_space
    if "ClientSelection" in env_id and isinstance(space, gym.spaces.Box):  # v1: top-k scores
        n = space.shape[0]
        return st.lists(_unit, min_size=n, max_size=n).map(lambda a: np.array(a, dtype=np.float32))
    if "ClientSelection" in env_id:
        one = st.lists(st.integers(0, 1), min_size=N, max_size=N) | st.sampled_from([[0] * N, [1] * N])
        return one.map(lambda a: np.array(a, dtype=np.int8))
    if "StepSize" in env_id:
        return st.tuples(_unit, _unit).map(lambda a: np.array(a, dtype=np.float32))
    if "RoundTermination" in env_id:
        return st.integers(0, 1) | st.just(0)
    nvec = space.nvec
    return st.tuples(*[st.integers(0, int(n) - 1) for n in nvec]).map(lambda a: np.array(a, dtype=np.int64))


def _env(env_id: str) -> gym.Env:
    if env_id not in _ENVS:
        _ENVS[env_id] = gym.make(env_id, config={"round_budget": 30})
    return _ENVS[env_id]


def _finite(value: object) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, float):
        return math.isfinite(value)
    return True


@pytest.mark.parametrize("env_id", TINY_IDS)
def test_random_and_extreme_actions_stay_finite(env_id):
    # four federations per env (cached by the env after the first reset), any np_random seed
    strategy = st.tuples(st.integers(0, 2**16), st.integers(0, 3), st.lists(_actions(env_id), min_size=10, max_size=30))

    steps = [0]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(strategy)
    def run(case):
        seed, federation, actions = case
        env = _env(env_id)
        options = {"federation_seed": federation}
        obs, _ = env.reset(seed=seed, options=options)
        for action in actions:
            obs, reward, terminated, truncated, info = env.step(action)
            assert env.observation_space.contains(obs)
            assert np.isfinite(obs).all() and math.isfinite(reward)
            assert _finite(info)
            steps[0] += 1
            if terminated or truncated:
                obs, _ = env.reset(options=options)

    with threadpool_limits(1):
        run()
    assert steps[0] >= EXAMPLES * 10
