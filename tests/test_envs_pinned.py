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
#: Linux, one BLAS thread; floats rounded to DECIMALS, checked equal before and after the new kernels;
#: ``python tests/test_envs_pinned.py`` prints them).
PINNED: dict[str, tuple[str, tuple[float, ...]]] = {
    "QFL/ClientSelection-Hard-v0": (
        "12250f9e1ed045ff345f74de8708113e",
        (-0.1246111111111111, 0.02403703703703703, 0.07133333333333337, -0.13337037037037042, 0.041055555555555574),
    ),
    "QFL/ClientSelection-Tiny-v0": (
        "53588b08ca2ae8473dac4fa1fdd95c6c",
        (-0.02, -0.34833333333333333, 0.3158333333333333, -0.015, 0.043055555555555576),
    ),
    "QFL/ClientSelection-v0": (
        "d4054018e8ef9db2ff81d26eb97395f7",
        (0.028296296296296278, -0.060296296296296285, -0.014, -0.03051851851851855, 0.0971111111111111),
    ),
    "QFL/FullControl-Hard-v0": (
        "4d2a73a35335ff3be0c7c2502658a921",
        (-0.027447664140225383, -0.15812921087311702, 0.05028609041102764, -0.04088447788389277, -0.027823076539321923),
    ),
    "QFL/FullControl-Tiny-v0": (
        "3f6fcf335d1714713de34d1ccc1d78ac",
        (-0.21119531384677534, -0.010471352819891314, 0.07361111111111117, -0.32230642495788653, -0.010471352819891314),
    ),
    "QFL/FullControl-v0": (
        "81a32eda975ca7ec106cd8fb08b59fa2",
        (-0.041521088599942906, -0.019395717393318503, 0.06586920840118597, -0.11443020607406479, 0.0),
    ),
    "QFL/RoundTermination-Hard-v0": (
        "666bc90957fb2d4049793a1eee2098ce",
        (-0.04981469668882872, -0.10455943132811589, 0.057314814814814825, -0.03130054798977705, -0.012231280098722618),
    ),
    "QFL/RoundTermination-Tiny-v0": (
        "209ae848dbd674715f5f1dcf793ef490",
        (-0.3953351866674782, 0.049109257776966196, -0.01, 0.4378203749160956, -0.11773518063946002),
    ),
    "QFL/RoundTermination-v0": (
        "5dc1014d2b0b0ac4952e17fca089c510",
        (0.10311111111111115, -0.29395539122956765, 0.09455880797513319, 0.08459259259259255, 0.02903703703703703),
    ),
    "QFL/StepSize-Hard-v0": (
        "1b04bb621529dfeadfa8d6229cb94558",
        (0.004453427586177826, -0.114666955613054, -0.01963806895406752, -0.02999148936221096, -0.012036800785064881),
    ),
    "QFL/StepSize-Tiny-v0": (
        "1e7d8bbc9b61b694c217d05744ef7878",
        (-0.012892595557178668, -0.34864717162779935, -0.029528647180108683, -0.02, -0.012892595557178668),
    ),
    "QFL/StepSize-v0": (
        "ff808cfc5d844bdb230bfff72d12dbbc",
        (-0.0577007812001815, -0.19076353940739807, -0.035604270105119414, -0.029923003422403713, 0.007777777777777816),
    ),
}


#: ``info`` keys added to every env after the v0 rollouts were pinned (additive: no v0 value changed).
ADDED_INFO_KEYS = frozenset({"cost", "total_cost", "objective"})


#: Decimals kept of every float before hashing: the simulator's kernels may change floating-point rounding
#: (the unitary engine of the batched-federation work moved values by ~1e-16), not the dynamics.
DECIMALS = 9


def _rounded(value):
    if isinstance(value, float):
        return round(value, DECIMALS) + 0.0  # + 0.0: no -0.0
    if isinstance(value, dict):
        return sorted((k, _rounded(v)) for k, v in value.items())
    return value


def _v0_info(info: dict) -> list:
    return sorted((k, _rounded(v)) for k, v in info.items() if k not in ADDED_INFO_KEYS)


def _obs_bytes(obs) -> bytes:
    return (np.round(np.asarray(obs, dtype=np.float64), 6) + 0.0).tobytes()


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
        digest = hashlib.sha256(_obs_bytes(obs))
        digest.update(repr(_v0_info(info)).encode())
        rewards = []
        for i in range(n_steps):
            obs, reward, terminated, truncated, info = env.step(_action(env, last=i == n_steps - 1))
            digest.update(_obs_bytes(obs))
            digest.update(repr((_rounded(reward), terminated, truncated, _v0_info(info))).encode())
            rewards.append(reward)
            if terminated or truncated:
                break
    return digest.hexdigest()[:32], tuple(rewards)


@pytest.mark.parametrize("env_id", sorted(PINNED))
def test_v0_rollouts_are_pinned(env_id):
    digest, rewards = fingerprint(env_id)
    np.testing.assert_allclose(rewards, PINNED[env_id][1], rtol=0, atol=1e-12)
    assert digest == PINNED[env_id][0]


def test_every_v0_id_is_pinned():
    assert sorted(PINNED) == sorted(i for i in gym.registry if i.startswith("QFL/") and i.endswith("-v0"))


if __name__ == "__main__":
    for env_id in sorted(i for i in gym.registry if i.startswith("QFL/") and i.endswith("-v0")):
        print(f"    {env_id!r}: {fingerprint(env_id)!r},")
