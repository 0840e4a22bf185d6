"""The fixed selection rules: the cohorts the v0 envs draw are pinned, so refactoring the rules cannot move them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import qflgym.envs  # noqa: F401  (registers the ids)

#: Cohorts of the first six rounds of the default envs whose clients the configured rule selects
#: (``random-k`` of 3 of 10 clients), for reset seeds 0 and 7; measured before the rules were unified.
PINNED_COHORTS = {
    0: [[2, 4, 6], [2, 3, 9], [4, 5, 9], [4, 5, 7], [1, 2, 7], [2, 4, 6]],
    7: [[0, 7, 8], [2, 4, 8], [4, 6, 7], [0, 8, 9], [2, 3, 9], [2, 5, 6]],
}


@pytest.mark.parametrize(
    ("env_id", "action"),
    [("QFL/StepSize-v0", np.zeros(2, dtype=np.float32)), ("QFL/RoundTermination-v0", 0)],
)
@pytest.mark.parametrize("seed", sorted(PINNED_COHORTS))
def test_default_env_cohorts_are_pinned(env_id, action, seed):
    env = gym.make(env_id)
    env.reset(seed=seed)
    cohorts = []
    for _ in range(6):
        env.step(action)
        cohorts.append(np.flatnonzero(env.unwrapped.last_decision.selected).tolist())
    assert cohorts == PINNED_COHORTS[seed]
