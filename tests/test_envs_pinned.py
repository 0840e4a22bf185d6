"""Pinned rollouts: every registered v0 id, fixed seed and actions, compared bit for bit with recorded values.

A refactoring of the env step, the registration or the presets must leave every v0 rollout unchanged (a
deliberate change of dynamics or reward defaults gets a new ``-vN`` id instead). The fingerprint hashes the
observations' bytes, the rewards' exact ``repr`` and the step's ``info`` of a short rollout.
"""

from __future__ import annotations

import hashlib

import gymnasium as gym
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import qflgym.envs  # noqa: F401  (registers the ids)

#: ``env id -> (fingerprint, rewards)``, recorded from the code before the env step was split (seed 3; x86-64
#: Linux, one BLAS thread; ``python tests/test_envs_pinned.py`` prints them).
PINNED: dict[str, tuple[str, tuple[float, ...]]] = {
    "QFL/ClientSelection-Hard-v0": (
        "64d47f026afbbe2c2a99a135029e92dd",
        (-0.1246111111111111, 0.02403703703703703, 0.07133333333333337, -0.13337037037037042, 0.041055555555555574),
    ),
    "QFL/ClientSelection-Tiny-v0": (
        "21dde0d5e988afb61f5f4c84cf796841",
        (-0.02, -0.34833333333333333, 0.3158333333333333, -0.015, 0.043055555555555576),
    ),
    "QFL/ClientSelection-v0": (
        "477f99bfdea58d85a16ef8187b23ba73",
        (0.028296296296296278, -0.060296296296296285, -0.014, -0.03051851851851855, 0.0971111111111111),
    ),
    "QFL/FullControl-Hard-v0": (
        "f6f7c7d388bc657dc09adeee978b9ba9",
        (-0.027447664140225383, -0.15812921087311702, 0.05028609041102764, -0.04088447788389277, -0.027823076539321923),
    ),
    "QFL/FullControl-Tiny-v0": (
        "1a170b7ecda4092d1f1d23ec25e0b630",
        (-0.21119531384677534, -0.010471352819891314, 0.07361111111111117, -0.32230642495788653, -0.010471352819891314),
    ),
    "QFL/FullControl-v0": (
        "f64a5d5ed9880a0b4857a8164c90428a",
        (-0.041521088599942906, -0.019395717393318503, 0.06586920840118597, -0.11443020607406479, 0.0),
    ),
    "QFL/RoundTermination-Hard-v0": (
        "cc30c3ea7c9cae3e4193a05a3431c727",
        (-0.04981469668882872, -0.10455943132811589, 0.057314814814814825, -0.03130054798977705, -0.012231280098722618),
    ),
    "QFL/RoundTermination-Tiny-v0": (
        "7fa1caecf0f35fdae9e0116f7193946a",
        (-0.3953351866674782, 0.049109257776966196, -0.01, 0.4378203749160956, -0.11773518063946002),
    ),
    "QFL/RoundTermination-v0": (
        "531f56844be076644f57649f4d546d63",
        (0.10311111111111115, -0.29395539122956765, 0.09455880797513319, 0.08459259259259255, 0.02903703703703703),
    ),
    "QFL/StepSize-Hard-v0": (
        "64f2da4884035251c37c0575c88e7483",
        (0.004453427586177826, -0.114666955613054, -0.01963806895406752, -0.02999148936221096, -0.012036800785064881),
    ),
    "QFL/StepSize-Tiny-v0": (
        "a5b8580b06aef4eec2c26edf947bdbdd",
        (-0.012892595557178668, -0.34864717162779935, -0.029528647180108683, -0.02, -0.012892595557178668),
    ),
    "QFL/StepSize-v0": (
        "6d80b427b2fae08eee705c64249055a9",
        (-0.0577007812001815, -0.19076353940739807, -0.035604270105119414, -0.029923003422403713, 0.007777777777777816),
    ),
}


#: ``info`` keys added to every env after the v0 rollouts were pinned (additive: no v0 value changed).
ADDED_INFO_KEYS = frozenset({"cost", "total_cost", "objective"})


def _v0_info(info: dict) -> list:
    return sorted((k, v) for k, v in info.items() if k not in ADDED_INFO_KEYS)


def _action(env: gym.Env, last: bool) -> object:
    """A sampled action that never stops before the last step (so every id runs several rounds)."""
    space = env.action_space
    action = space.sample()
    if not last and isinstance(space, gym.spaces.Discrete):
        return 0
    if not last and isinstance(space, gym.spaces.MultiDiscrete):
        action[-1] = 0
    return action


def fingerprint(env_id: str, seed: int = 3, n_steps: int = 5) -> tuple[str, tuple[float, ...]]:
    """Hash of a short rollout of ``env_id`` and its rewards."""
    with threadpool_limits(1):
        env = gym.make(env_id)
        obs, info = env.reset(seed=seed)
        env.action_space.seed(seed)
        digest = hashlib.sha256(np.asarray(obs, dtype=np.float32).tobytes())
        digest.update(repr(_v0_info(info)).encode())
        rewards = []
        for i in range(n_steps):
            obs, reward, terminated, truncated, info = env.step(_action(env, last=i == n_steps - 1))
            digest.update(np.asarray(obs, dtype=np.float32).tobytes())
            digest.update(repr((reward, terminated, truncated, _v0_info(info))).encode())
            rewards.append(reward)
            if terminated or truncated:
                break
    return digest.hexdigest()[:32], tuple(rewards)


@pytest.mark.parametrize("env_id", sorted(PINNED))
def test_v0_rollouts_are_pinned(env_id):
    digest, rewards = fingerprint(env_id)
    assert rewards == PINNED[env_id][1]
    assert digest == PINNED[env_id][0]


def test_every_v0_id_is_pinned():
    assert sorted(PINNED) == sorted(i for i in gym.registry if i.startswith("QFL/") and i.endswith("-v0"))


if __name__ == "__main__":
    for env_id in sorted(i for i in gym.registry if i.startswith("QFL/") and i.endswith("-v0")):
        print(f"    {env_id!r}: {fingerprint(env_id)!r},")
