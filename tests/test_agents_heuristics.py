"""Heuristic controllers: each rule's defining behaviour, the predict protocol, the registry."""

from __future__ import annotations

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest

import qflgym.envs  # noqa: F401 -- registers the ids
from qflgym.agents.controllers import controller_kwargs, controller_names, make_controller
from qflgym.agents.controllers.selection import SELECTORS
from qflgym.agents.controllers.step_size import STEP_SIZE_RULES
from qflgym.agents.controllers.termination import TERMINATION_RULES
from qflgym.agents.evaluation import run_episode
from qflgym.config import ConfigError
from qflgym.registry import UnknownNameError

N_BIG = 8  # clients of the crafted-observation env


@pytest.fixture(scope="module")
def env():
    """A ClientSelection env with N_BIG clients (only its layout, codec and config are used)."""
    e = gym.make("QFL/ClientSelection-Tiny-v0", config={"federation": {"clients": {"n_clients": N_BIG}}})
    yield e
    e.close()


@pytest.fixture(scope="module")
def step_env():
    e = gym.make("QFL/StepSize-Tiny-v0")
    yield e
    e.close()


def make_obs(env, round_fraction=0.5, val_accuracy=0.5, **client):
    """A flat observation with the given client features (arrays of length N) and globals."""
    layout = env.unwrapped.layout
    obs = np.zeros(layout.size, dtype=np.float32)
    clients = layout.clients(obs)  # a view
    defaults = {
        "available": np.ones(layout.n_clients),
        "data_size": np.ones(layout.n_clients),
        "last_loss": np.ones(layout.n_clients),
        "latency": np.full(layout.n_clients, 0.5),
    }
    for name, values in {**defaults, **client}.items():
        clients[:, layout.client_features.index(name)] = values
    g = layout.globals_(obs)
    g[layout.global_features.index("round_fraction")] = round_fraction
    g[layout.global_features.index("val_accuracy")] = val_accuracy
    return obs


def selected(env, controller, obs):
    action, _ = controller.predict(obs)
    return env.unwrapped.action_codec.decode(action).selected


# ---------------------------------------------------------------------------------------------- registry
def test_every_rule_is_a_registered_controller():
    names = controller_names()
    for rule in [*SELECTORS.names(), *STEP_SIZE_RULES.names(), *TERMINATION_RULES.names()]:
        assert rule in names or rule == "never"
    assert {"composite", "sb3", "random-k", "power-of-choice", "oort"} <= set(names)
    assert controller_kwargs("power-of-choice") == ["k", "d"]


def test_unknown_controller_and_argument(env):
    with pytest.raises(UnknownNameError, match=r"unknown controller 'nope'; allowed: .*random-k"):
        make_controller("nope", env)
    with pytest.raises(ConfigError, match="allowed: k, d"):
        make_controller("power-of-choice", env, q=3)
    with pytest.raises(UnknownNameError, match="unknown selector 'best'; allowed: all-clients"):
        make_controller("composite", env, selection="best")
    with pytest.raises(ConfigError, match="k must be in"):
        make_controller("random-k", env, k=N_BIG + 1)


# ---------------------------------------------------------------------------------------------- selection
def test_all_clients_selects_every_available_client(env):
    avail = np.array([1, 1, 0, 1, 0, 1, 1, 1])
    ctrl = make_controller("all-clients", env)
    assert np.array_equal(selected(env, ctrl, make_obs(env, available=avail)), avail.astype(bool))


def test_random_k_draws_k_available_clients_uniformly_and_reproducibly(env):
    avail = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    obs = make_obs(env, available=avail)
    ctrl = make_controller("random-k", env, seed=0, k=3)
    counts = np.zeros(N_BIG)
    for _ in range(600):
        sel = selected(env, ctrl, obs)
        assert sel.sum() == 3 and not sel[6:].any()
        counts += sel
    assert np.all(np.abs(counts[:6] / 600 - 0.5) < 0.1)  # each of 6 available: p = 3/6
    a = [selected(env, make_controller("random-k", env, seed=7, k=3), obs) for _ in range(2)]
    assert np.array_equal(a[0], a[1])


def test_round_robin_cycles_through_clients_in_order(env):
    ctrl = make_controller("round-robin", env, k=3)
    seen = [np.flatnonzero(selected(env, ctrl, make_obs(env, round_fraction=0.1 * (t + 1)))) for t in range(3)]
    assert [s.tolist() for s in seen] == [[0, 1, 2], [3, 4, 5], [0, 6, 7]]  # 6, 7, then wraps to 0
    avail = np.ones(N_BIG)
    avail[2] = 0
    ctrl = make_controller("round-robin", env, k=3)
    assert np.flatnonzero(selected(env, ctrl, make_obs(env, available=avail))).tolist() == [0, 1, 3]


def test_power_of_choice_keeps_the_highest_loss_clients_among_the_sampled(env):
    rng = np.random.default_rng(1)
    ctrl = make_controller("power-of-choice", env, seed=3, k=2, d=4)
    for t in range(50):
        loss = rng.random(N_BIG)
        sel = selected(env, ctrl, make_obs(env, round_fraction=0.01 * (t + 1), last_loss=loss))
        candidates = ctrl.memory[0]["selection"]["candidates"]
        assert len(candidates) == 4 and sel.sum() == 2
        assert set(np.flatnonzero(sel)) <= set(candidates)
        best_two = candidates[np.argsort(-loss[candidates])[:2]]
        assert set(np.flatnonzero(sel)) == set(best_two)


def test_power_of_choice_samples_candidates_by_data_size_and_d_equal_n_is_loss_greedy(env):
    size = np.ones(N_BIG)
    size[0] = 0.0  # a client with no data is (almost) never a candidate
    ctrl = make_controller("power-of-choice", env, seed=0, k=1, d=3)
    for t in range(100):
        selected(env, ctrl, make_obs(env, round_fraction=0.01 * (t + 1), data_size=size))
        assert 0 not in ctrl.memory[0]["selection"]["candidates"]
    loss = np.linspace(0.1, 0.8, N_BIG)
    full = make_controller("power-of-choice", env, seed=0, k=3, d=N_BIG)
    assert np.flatnonzero(selected(env, full, make_obs(env, last_loss=loss))).tolist() == [5, 6, 7]
    with pytest.raises(ValueError, match="d must be in"):
        make_controller("power-of-choice", env, k=3, d=2)


def test_loss_greedy_takes_the_k_highest_losses_among_available(env):
    loss = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.95, 0.4])
    avail = np.ones(N_BIG)
    avail[6] = 0
    ctrl = make_controller("loss-greedy", env, k=3)
    assert np.flatnonzero(selected(env, ctrl, make_obs(env, last_loss=loss, available=avail))).tolist() == [
        0,
        2,
        4,
    ]


def test_oort_prefers_fast_clients_of_similar_utility_and_explores_unseen_ones(env):
    loss = np.full(N_BIG, 0.5)
    loss[0] = 0.6  # highest statistical utility but 4x slower than the preferred duration
    latency = np.full(N_BIG, 0.2)
    latency[0] = 0.8
    times = np.full(N_BIG, 0.1)  # everyone explored
    ctrl = make_controller("oort", env, seed=0, k=2, epsilon=0.0, staleness_weight=0.0)
    obs = make_obs(env, last_loss=loss, latency=latency, times_selected=times)
    util = ctrl.selection.utility(ctrl.view.bind(obs), {})
    assert util[0] == pytest.approx(0.6 * (0.2 / 0.8) ** 2)
    assert not selected(env, ctrl, obs)[0]
    no_penalty = make_controller("oort", env, seed=0, k=1, epsilon=0.0, alpha=0.0)
    assert np.flatnonzero(selected(env, no_penalty, obs)).tolist() == [0]
    # epsilon = 1: every slot explores never-selected clients, fastest first
    times = np.full(N_BIG, 0.1)
    times[[3, 5, 7]] = 0.0
    latency = np.linspace(0.1, 0.9, N_BIG)
    explore = make_controller("oort", env, seed=0, k=2, epsilon=1.0)
    obs = make_obs(env, times_selected=times, latency=latency)
    assert np.flatnonzero(selected(env, explore, obs)).tolist() == [3, 5]


def test_oort_staleness_bonus_favours_long_unselected_clients(env):
    since = np.zeros(N_BIG)
    since[4] = 0.5  # not selected for half the budget
    ctrl = make_controller("oort", env, seed=0, k=1, epsilon=0.0)
    obs = make_obs(env, round_fraction=0.6, rounds_since_selected=since, times_selected=np.full(N_BIG, 0.1))
    assert np.flatnonzero(selected(env, ctrl, obs)).tolist() == [4]


# ---------------------------------------------------------------------------------------------- step size
def _lrs(env, name, n_rounds, **kwargs):
    ctrl = make_controller(name, env, **kwargs)
    out = []
    mem: dict = {}
    for t in range(n_rounds):
        out.append(ctrl.decide(make_obs(env, round_fraction=(t + 1) / 100), mem).lr)
    return out


def test_constant_and_step_decay_learning_rates(env):
    base = env.unwrapped.config.fixed_lr
    assert _lrs(env, "constant-lr", 3) == [base] * 3
    lrs = _lrs(env, "step-decay", 9, lr=0.4, gamma=0.5, every=3)
    assert lrs == pytest.approx([0.4] * 3 + [0.2] * 3 + [0.1] * 3)


def test_cosine_anneals_from_lr_to_lr_min_over_the_budget(env):
    lrs = _lrs(env, "cosine-lr", 11, lr=1.0, lr_min=0.1, rounds=10)
    assert lrs[0] == pytest.approx(1.0) and lrs[10] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.55)
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_step_size_rules_reach_the_env_through_the_codec(step_env):
    ctrl = make_controller("step-decay", step_env, lr=0.4, gamma=0.5, every=1, local_steps=2)
    codec = step_env.unwrapped.action_codec
    obs, _ = step_env.reset(seed=0)
    lrs = []
    for _ in range(3):
        action, _ = ctrl.predict(obs)
        d = codec.decode(action)
        lrs.append(d.lr)
        assert d.local_steps == 2
        obs, *_ = step_env.step(action)
    expected = [min(max(lr, codec.lr_map.lr(-1.0)), codec.lr_map.lr(1.0)) for lr in (0.4, 0.2, 0.1)]
    assert lrs == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------- termination
def test_patience_stops_after_patience_rounds_without_improvement(env):
    ctrl = make_controller("patience", env, patience=3)
    accs = [0.3, 0.5, 0.5, 0.49, 0.5, 0.5]  # best 0.5 at round 2, then 4 rounds without a gain
    mem: dict = {}
    stops = [
        ctrl.decide(make_obs(env, round_fraction=(t + 1) / 100, val_accuracy=a), mem).stop for t, a in enumerate(accs)
    ]
    assert stops == [False, False, False, False, True, True]


def test_target_reached_stops_at_the_target(env):
    ctrl = make_controller("target-reached", env, target=0.7)
    mem: dict = {}
    assert not ctrl.decide(make_obs(env, val_accuracy=0.69), mem).stop
    assert ctrl.decide(make_obs(env, val_accuracy=0.7), mem).stop


# ---------------------------------------------------------------------------------------------- protocol
def test_predict_is_batched_like_sb3(env):
    rng = np.random.default_rng(0)
    batch = np.stack([make_obs(env, last_loss=rng.random(N_BIG)) for _ in range(3)])
    ctrl = make_controller("loss-greedy", env, k=2)
    actions, state = ctrl.predict(batch, episode_start=np.ones(3, dtype=bool))
    assert actions.shape == (3, N_BIG) and state is None
    for row, action in zip(batch, actions, strict=True):
        assert np.array_equal(ctrl.predict(row)[0], action)
    with pytest.raises(ValueError, match="expects an observation of shape"):
        ctrl.predict(np.zeros(5))


def test_memory_resets_on_episode_start(env):
    ctrl = make_controller("round-robin", env, k=3)
    ctrl.predict(make_obs(env, round_fraction=0.1))
    first = selected(env, ctrl, make_obs(env, round_fraction=0.2))
    assert np.flatnonzero(first).tolist() == [3, 4, 5]
    action, _ = ctrl.predict(make_obs(env, round_fraction=0.3), episode_start=np.array([True]))
    assert np.flatnonzero(env.unwrapped.action_codec.decode(action).selected).tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("env_id", "name", "kwargs"),
    [
        ("QFL/ClientSelection-Tiny-v0", "power-of-choice", {}),
        ("QFL/ClientSelection-Tiny-v0", "oort", {}),
        ("QFL/StepSize-Tiny-v0", "cosine-lr", {}),
        ("QFL/RoundTermination-Tiny-v0", "patience", {"patience": 2}),
        (
            "QFL/FullControl-Tiny-v0",
            "composite",
            {"selection": "power-of-choice", "step_size": "step-decay", "termination": "patience"},
        ),
    ],
)
def test_heuristics_run_full_episodes(env_id, name, kwargs):
    e = gym.make(env_id)
    ep = run_episode(e, make_controller(name, e, seed=0, **kwargs), seed=123)
    e.close()
    assert ep.steps >= 1 and math.isfinite(ep.total_return)
    assert ep.terminated or ep.truncated
    assert len(ep.trace) == ep.rounds + 1


def test_heuristics_drive_a_vec_env_through_sb3_evaluate_policy():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    venv = make_vec_env("QFL/ClientSelection-Tiny-v0", n_envs=2, seed=0, env_kwargs={"config": {"federation_seed": 0}})
    ctrl = make_controller("power-of-choice", venv, seed=0, k=2)
    rewards, lengths = evaluate_policy(ctrl, venv, n_eval_episodes=2, return_episode_rewards=True)
    venv.close()
    assert len(rewards) == 2 and all(1 <= n <= 8 for n in lengths)
    assert len(ctrl.memory) == 2  # one memory per sub-env


def test_selection_budget_envs_get_k_from_the_budget():
    e = gym.make("QFL/ClientSelection-Tiny-v0", config={"selection_budget": 2, "federation_seed": 0})
    ctrl = make_controller("loss-greedy", e)
    assert ctrl.selection.k == 2
    obs, _ = e.reset(seed=0)
    action, _ = ctrl.predict(obs)
    assert e.action_space.contains(action) and e.unwrapped.action_codec.decode(action).selected.sum() <= 2
    with pytest.raises(ValueError, match="selection budget"):
        make_controller("all-clients", e)
    e.close()
