"""The v1 envs: the operator's cost model, the v1 observation, the objectives and the trade-offs they pose."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest

import qflgym.envs  # noqa: F401
from qflgym.config import ConfigError
from qflgym.envs.actions import ControlDecision
from qflgym.envs.objectives import OBJECTIVES, EpisodeOutcome
from qflgym.envs.observation import CLIENT_FEATURES_V1, GLOBAL_FEATURES_V1, client_step_costs
from qflgym.envs.registration import ENV_IDS, TEXT_ENV_IDS

#: The text ids need the corpus and its embeddings: tests/test_text_envs.py checks them on fixture data.
V1_IDS = [i for i in ENV_IDS if i.endswith("-v1") and i not in TEXT_ENV_IDS]


def _select(env, ids):
    u = env.unwrapped
    return u.action_codec.encode(ControlDecision.select(ids, u.n_clients))


def test_every_family_has_v1_default_hard_tiny_and_client_selection_a_large_variant():
    for family in ("ClientSelection", "StepSize", "RoundTermination", "FullControl"):
        for variant in ("", "-Hard", "-Tiny"):
            assert f"QFL/{family}{variant}-v1" in V1_IDS
    assert "QFL/ClientSelection-Large-v1" in V1_IDS


def test_v1_defaults_pose_the_issue_trade_offs():
    cfg = gym.make("QFL/ClientSelection-v1").unwrapped.config
    clients = cfg.federation.clients
    assert cfg.n_clients >= 20 and cfg.federation.partition.alpha <= 0.3
    low, high = clients.latency_s
    assert high / low >= 100  # latencies over two orders of magnitude
    assert cfg.objective == "cost_to_target" and cfg.selection_budget is not None
    assert gym.make("QFL/ClientSelection-Large-v1").unwrapped.n_clients >= 100


@pytest.mark.parametrize("env_id", ["QFL/ClientSelection-Tiny-v1", "QFL/StepSize-Tiny-v1", "QFL/FullControl-Tiny-v1"])
def test_v1_observation_prices_each_client_and_the_cost_spent(env_id):
    env = gym.make(env_id)
    obs, _ = env.reset(seed=4)
    u = env.unwrapped
    assert u.layout.client_features == CLIENT_FEATURES_V1 and u.layout.global_features == GLOBAL_FEATURES_V1
    cfg = u.config
    seconds, shots = client_step_costs(u.federation)
    np.testing.assert_allclose(u.layout.client(obs, "step_time"), seconds / cfg.cost_scale, rtol=1e-6)
    np.testing.assert_allclose(
        u.layout.client(obs, "step_shot_cost"), cfg.shot_price * shots / cfg.cost_scale, rtol=1e-6
    )
    assert u.layout.global_(obs, "cost_spent") == 0.0
    env.action_space.seed(0)
    action = env.action_space.sample()
    if env_id.startswith("QFL/FullControl"):
        action[-1] = 0
    obs, _, _, _, info = env.step(action)
    report = u.last_report
    cost = report.wall_time_s + cfg.shot_price * report.shots_used
    assert info["cost"] == pytest.approx(cost) and info["total_cost"] == pytest.approx(cost)
    reference = cfg.cost_budget or cfg.round_budget * cfg.cost_scale
    assert u.layout.global_(obs, "cost_spent") == pytest.approx(cost / reference, rel=1e-6)
    assert info["rewards"]["cost"] == pytest.approx(cost / cfg.cost_scale)


def test_a_round_lasts_as_long_as_its_slowest_participant():
    env = gym.make("QFL/ClientSelection-Tiny-v1", config={"federation": {"clients": {"availability": 1.0}}})
    env.reset(seed=1)
    u = env.unwrapped
    seconds, _ = client_step_costs(u.federation)
    fast, slow = int(np.argmin(seconds)), int(np.argmax(seconds))
    state = u.get_state()
    _, _, _, _, alone = env.step(_select(env, [fast]))
    u.set_state(state)
    _, _, _, _, with_straggler = env.step(_select(env, [fast, slow]))
    server = u.config.federation.server_time_s
    assert alone["wall_time_s"] == pytest.approx(server + seconds[fast])
    assert with_straggler["wall_time_s"] == pytest.approx(server + seconds[slow])
    assert with_straggler["wall_time_s"] - alone["wall_time_s"] == pytest.approx(seconds[slow] - seconds[fast])


def test_a_noisy_clients_update_measurably_hurts():
    base = {"federation": {"clients": {"availability": 1.0, "shots": None, "readout_error": 0.0}}}
    losses = {}
    for name, readout in (("clean", 0.0), ("noisy", 0.45)):
        cfg = base | {"federation": {"clients": {"availability": 1.0, "shots": None, "readout_error": readout}}}
        env = gym.make("QFL/ClientSelection-v1", config=cfg)
        env.reset(seed=3)
        for _ in range(5):
            _, _, _, _, info = env.step(_select(env, [0, 1, 2]))
        losses[name] = info["val_loss"]
    assert losses["noisy"] > losses["clean"] + 0.05


def test_the_cost_budget_truncates_and_censors_cost_to_target():
    env = gym.make("QFL/ClientSelection-Tiny-v1", config={"cost_budget": 1.0, "target_accuracy": 1.0})
    env.reset(seed=0)
    truncated, steps = False, 0
    while not truncated:
        _, _, terminated, truncated, info = env.step(_select(env, list(range(3))))
        steps += 1
        assert not terminated
    assert info["total_cost"] >= 1.0 and steps < env.unwrapped.config.round_budget
    assert info["objective"] == 1.0  # censored at the budget


def test_objectives_by_hand():
    outcome = EpisodeOutcome(
        rounds=7,
        total_cost=12.5,
        reached=True,
        final_accuracy=0.8,
        round_budget=50,
        cost_budget=100.0,
        cost_scale=10.0,
        cost_weight=0.2,
    )
    assert OBJECTIVES.get("rounds_to_target")(outcome) == 7.0
    assert OBJECTIVES.get("cost_to_target")(outcome) == 12.5
    assert OBJECTIVES.get("error_plus_cost")(outcome) == pytest.approx(0.2 + 0.2 * 1.25)
    missed = dataclasses.replace(outcome, reached=False)
    assert OBJECTIVES.get("rounds_to_target")(missed) == 50.0
    assert OBJECTIVES.get("cost_to_target")(missed) == 100.0
    assert OBJECTIVES.get("cost_to_target")(dataclasses.replace(missed, cost_budget=None)) == math.inf


def test_error_plus_cost_is_reported_after_a_stop():
    env = gym.make("QFL/RoundTermination-Tiny-v1")
    env.reset(seed=2)
    for _ in range(3):
        _, _, _, _, info = env.step(0)
    _, _, terminated, _, stopped = env.step(1)
    cfg = env.unwrapped.config
    assert terminated
    expected = (1 - info["val_accuracy"]) + cfg.cost_weight * info["total_cost"] / cfg.cost_scale
    assert stopped["objective"] == pytest.approx(expected)  # tiny: no test split, so validation accuracy


def test_when_to_stop_does_not_change_the_run_before_it():
    """What benchmarks/stopping_bound.py relies on: stopping after round r pays the never-stopping run's objective
    at r (the clients follow the env's own rule; the stop decision draws nothing)."""
    env = gym.make("QFL/RoundTermination-Tiny-v1")
    env.reset(seed=4)
    curve = [env.step(0)[4]["objective"] for _ in range(6)]
    assert len(set(curve)) > 1
    for r in (1, 3, 6):
        env.reset(seed=4)
        for _ in range(r):
            env.step(0)
        _, _, terminated, _, info = env.step(1)
        assert terminated and info["objective"] == curve[r - 1]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"objective": "fastest"}, "objective"),
        ({"shot_price": -1.0}, "shot_price"),
        ({"cost_budget": 0.0}, "cost_budget"),
        ({"cost_scale": float("nan")}, "cost_scale"),
        ({"features": "v2"}, "features"),
        ({"selection_budget": 99}, "selection_budget"),
    ],
)
def test_bad_v1_settings_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        gym.make("QFL/ClientSelection-Tiny-v1", config=override)


def test_unknown_objective_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="cost_to_target"):
        gym.make("QFL/ClientSelection-Tiny-v1", config={"objective": "fastest"})


@pytest.mark.parametrize("env_id", V1_IDS)
def test_v1_ids_pass_check_env_and_roll_out_alike(env_id):
    from gymnasium.utils.env_checker import check_env

    if "Large" in env_id or "Hard" in env_id:
        pytest.skip("same code as the default; checked there (large federations are slow to build)")
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    rollouts = []
    for _ in range(2):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=11)
        env.action_space.seed(11)
        trace = [obs]
        for _ in range(3):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            trace.append(np.append(obs, reward))
            if terminated or truncated:
                break
        rollouts.append(np.concatenate(trace))
    np.testing.assert_array_equal(rollouts[0], rollouts[1])
