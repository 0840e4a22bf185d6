"""Every observation feature and every reward term, recomputed by hand from the round reports.

The reference (``tests/env_reference.py``) reads only what the simulator reports (``env.unwrapped.last_report``,
the federation's device profiles and client statistics, its config) and the documented definitions of the
features (``docs/envs/observation.md``) and terms (``envs/rewards.py``). Each step of a few scripted episodes, the
env's observation, reward and ``info["rewards"]`` must equal the reference, feature by feature.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import qflgym.envs  # noqa: F401  (registers the ids)
from qflgym.envs import ControlDecision
from qflgym.envs.observation import (
    CLIENT_FEATURE_BOUNDS,
    CLIENT_FEATURES,
    CLIENT_FEATURES_V1,
    GLOBAL_FEATURE_BOUNDS,
    GLOBAL_FEATURES,
    GLOBAL_FEATURES_V1,
    LABEL_FEATURES,
    MAX_LABEL_CLASSES,
    ObservationLayout,
    RoundScales,
    static_client_features,
)
from qflgym.qfl_core.clients import DeviceProfile
from qflgym.qfl_core.partition import client_statistics

from .env_reference import checked_run, select_ids


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def _documented_features(section: str) -> list[tuple[str, tuple[float, float]]]:
    """``(name, bounds)`` rows of a feature table of ``docs/envs/observation.md``, in index order."""
    text = (Path(__file__).parent.parent / "docs/envs/observation.md").read_text()
    table = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("`"):
            low, high = (float(v.replace("−", "-")) for v in cells[3].strip("[]").split(","))
            names = LABEL_FEATURES if cells[1] == "`label_frac_c` (c = 0 … 9)" else (cells[1].strip("`"),)
            rows += [(name, (low, high)) for name in names]
    return rows


def test_feature_order_and_bounds_are_the_documented_ones_and_the_spaces():
    clients, globals_ = _documented_features("Client features"), _documented_features("Global features")
    assert [n for n, _ in clients] == list(CLIENT_FEATURES) and len(LABEL_FEATURES) == MAX_LABEL_CLASSES == 10
    assert [n for n, _ in globals_] == list(GLOBAL_FEATURES)
    v1_clients, v1_globals = _documented_features("v1 client features"), _documented_features("v1 global features")
    assert [n for n, _ in clients + v1_clients] == list(CLIENT_FEATURES_V1)
    assert [n for n, _ in globals_ + v1_globals] == list(GLOBAL_FEATURES_V1)
    assert dict(clients + v1_clients) == CLIENT_FEATURE_BOUNDS and dict(globals_ + v1_globals) == GLOBAL_FEATURE_BOUNDS
    layout = ObservationLayout(3)
    assert layout.client_features == CLIENT_FEATURES and layout.global_features == GLOBAL_FEATURES
    assert layout.size == 3 * len(CLIENT_FEATURES) + len(GLOBAL_FEATURES) == layout.flat_space().shape[0]
    low = [lo for _, (lo, _) in clients] * 3 + [lo for _, (lo, _) in globals_]
    high = [hi for _, (_, hi) in clients] * 3 + [hi for _, (_, hi) in globals_]
    np.testing.assert_array_equal(layout.flat_space().low, low)
    np.testing.assert_array_equal(layout.flat_space().high, high)
    space = layout.dict_space()
    np.testing.assert_array_equal(space["clients"].low.reshape(-1), low[: layout.client_size])
    np.testing.assert_array_equal(space["global"].high, high[layout.client_size :])
    obs = np.arange(layout.size, dtype=np.float32)
    assert layout.client(list(obs), "label_skew").tolist() == [1.0, 22.0, 43.0]  # any array-like
    assert layout.global_(tuple(obs), "val_accuracy") == 64.0 and isinstance(layout.global_(obs, "val_loss"), float)
    assert layout.global_(np.stack([obs, obs + 1]), "val_loss").tolist() == [65.0, 66.0]


def test_ten_classes_fill_every_label_fraction_column():
    config = {"federation": {"data": {"classes": None, "max_samples": 400}, "partition": {"min_samples": 10}}}
    env = gym.make("QFL/ClientSelection-Tiny-v0", config=config)
    obs, _ = env.reset(seed=0)
    fractions = np.stack([env.unwrapped.layout.client(obs, name) for name in LABEL_FEATURES], axis=-1)
    assert env.unwrapped.federation.n_classes == MAX_LABEL_CLASSES
    np.testing.assert_allclose(fractions.sum(axis=-1), 1.0, rtol=1e-6)
    assert (fractions[:, -1] > 0).any()


FULL_CONTROL = "QFL/FullControl-Tiny-v0"
ALWAYS_ONLINE = {"federation": {"clients": {"availability": 1.0}}}


def test_full_control_by_hand_with_a_full_round_then_partial_rounds_and_an_early_stop():
    env = gym.make(FULL_CONTROL)
    grid = env.unwrapped.action_codec.lr_grid
    steps = checked_run(
        FULL_CONTROL,
        ALWAYS_ONLINE,
        [
            select_ids([0, 1, 2, 3], lr=grid[3], local_steps=1),
            select_ids([0, 2], lr=grid[-1], local_steps=3),
            select_ids([1], lr=grid[0], local_steps=2),
            select_ids([3, 1], lr=grid[4], local_steps=1),
            ControlDecision(stop=True),
        ],
    )
    full, stop = steps[0]["terms"], steps[-1]["terms"]
    # A round in which every client trains with the fixed local steps costs one "full round" of each kind.
    assert full["communication_cost"] == full["wall_time_cost"] == full["shot_cost"] == pytest.approx(1.0)
    assert steps[1]["terms"]["shot_cost"] > 1.0 > steps[2]["terms"]["communication_cost"] > 0.0
    assert stop["early_stop_penalty"] > 0.0 and stop["stop_accuracy"] > 0.0 and stop["round_cost"] == 0.0
    assert steps[-1]["terminated"] and steps[-1]["report"] is None
    assert any(s["terms"]["accuracy_gain"] > 0 for s in steps) and any(s["terms"]["loss_drop"] < 0 for s in steps)


def test_client_selection_by_hand_with_dropouts_until_the_budget():
    config = {"target_accuracy": None, "lr_multiplier": 2.0}
    steps = checked_run(
        "QFL/ClientSelection-Tiny-v0", config, [select_ids([0, 1, 2, 3])] * 6 + [select_ids([1, 2])] * 2
    )
    assert steps[-1]["truncated"] and len(steps) == 8
    assert any(s["report"].dropped for s in steps)


def test_step_size_by_hand_with_the_configured_selection_rule():
    steps = checked_run("QFL/StepSize-Tiny-v0", {"target_accuracy": None}, [None] * 4)
    assert len({s["report"].local_steps for s in steps} | {s["report"].lr for s in steps}) > 2


def test_target_bonus_by_hand_on_the_step_that_first_reaches_the_target():
    decisions = [select_ids([0, 1, 2, 3])] * 8
    free = checked_run("QFL/ClientSelection-Tiny-v0", {"target_accuracy": None} | ALWAYS_ONLINE, decisions)
    accuracies = [s["report"].val_accuracy for s in free]
    k = int(np.argmax(accuracies))
    assert k > 0 and accuracies[k] > max(accuracies[:k])
    reached = checked_run("QFL/ClientSelection-Tiny-v0", {"target_accuracy": accuracies[k]} | ALWAYS_ONLINE, decisions)
    assert len(reached) == k + 1 and reached[-1]["terminated"] and not reached[-1]["truncated"]
    assert [s["terms"]["target_bonus"] for s in reached] == [0.0] * k + [1.0]


def test_features_beyond_their_bounds_are_clipped_by_hand_too():
    config = {"round_budget": 2, "local_steps_range": [1, 30], "lr_multiplier_range": [1e-4, 1.0]} | ALWAYS_ONLINE
    env = gym.make(FULL_CONTROL, config=config)
    slow = select_ids([0, 1, 2, 3], lr=env.unwrapped.action_codec.lr_grid[0], local_steps=30)
    steps = checked_run(FULL_CONTROL, config, [slow, slow])
    assert steps[-1]["truncated"]
    # both bounds are hit: the time spent is beyond the cumulative_wall_time bound, the lr below learning_rate's
    assert steps[0]["terms"]["wall_time_cost"] / 2 > GLOBAL_FEATURE_BOUNDS["cumulative_wall_time"][1]
    base_lr = env.unwrapped.config.federation.training.lr
    assert math.log10(steps[0]["report"].lr / base_lr) < GLOBAL_FEATURE_BOUNDS["learning_rate"][0]


def test_a_non_finite_observation_raises_naming_the_feature(monkeypatch):
    from qflgym.qfl_core.federation import Federation

    evaluate = Federation.evaluate

    def nan_loss(self):
        return evaluate(self) | {"val_loss": float("nan")}

    monkeypatch.setattr(Federation, "evaluate", nan_loss)
    with pytest.raises(FloatingPointError, match="val_loss, val_loss_change"):
        gym.make("QFL/ClientSelection-Tiny-v0").reset(seed=0)


V1_FULL_CONTROL = "QFL/FullControl-Tiny-v1"
#: A v1 federation with noisy and noiseless, finite-shot and exact clients, and a shot price that shows.
MIXED_V1 = {
    "shot_price": 1e-4,
    "federation": {"clients": {"shots": [32, None], "depolarizing": [0.0, 0.05]}},
}


def test_v1_full_control_by_hand_with_step_prices_the_cost_spent_and_a_stop():
    env = gym.make(V1_FULL_CONTROL, config=MIXED_V1)
    grid, n = env.unwrapped.action_codec.lr_grid, env.unwrapped.n_clients
    assert env.unwrapped.config.cost_scale != 1.0
    decisions = [
        select_ids(list(range(n)), n, lr=grid[2], local_steps=2),
        select_ids([1, 4], n, lr=grid[-1], local_steps=3),
        ControlDecision(stop=True),
    ]
    steps = checked_run(V1_FULL_CONTROL, MIXED_V1, decisions, seed=0)
    assert steps[-1]["terminated"] and steps[-1]["report"] is None
    assert steps[1]["terms"]["cost"] > 0.0 == steps[-1]["terms"]["cost"]


def test_exact_clients_and_several_local_steps_by_hand():
    config = {
        "target_accuracy": None,
        "local_steps": 3,  # the env's fixed local steps: the scales' round
        "federation": {"clients": {"shots": None}, "training": {"local_steps": 2}},  # the update-norm scale
    }
    steps = checked_run(
        "QFL/ClientSelection-Tiny-v0", config, [select_ids([0, 1, 2, 3]), select_ids([2, 3])], mixed=False
    )
    assert all(s["terms"]["shots_scale"] == 1.0 for s in steps)  # the floor: nothing to divide by otherwise
    assert all(s["report"].shots_used == 0 and s["report"].local_steps == 3 for s in steps)
    env = gym.make("QFL/ClientSelection-Tiny-v0", config=config)
    env.reset(seed=5)
    scales = RoundScales.of(env.unwrapped.federation, 3)
    training = env.unwrapped.config.federation.training
    assert scales.norm == training.lr * 2 and scales.shots == 1.0 and scales.loss == math.log(2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scales.norm = 1.0  # type: ignore[misc]


def test_the_round_that_spends_the_cost_budget_exactly_truncates():
    def first_round(cost_budget: float | None) -> tuple[bool, dict]:
        env = gym.make("QFL/ClientSelection-Tiny-v1", config={"cost_budget": cost_budget, "target_accuracy": None})
        env.reset(seed=3)
        _, _, terminated, truncated, info = env.step(env.unwrapped.action_codec.encode(select_ids([0, 1], 6)))
        assert not terminated
        return truncated, info

    _, info = first_round(None)
    cost = info["cost"]
    assert cost > 0.0 and info["total_cost"] == cost
    assert first_round(cost)[0] and not first_round(float(np.nextafter(cost, math.inf)))[0]


def test_static_features_of_clients_with_one_or_no_sample_and_one_or_no_shot():
    # clients: 1 sample (class 1); none; 3 samples (classes 0, 0, 1)
    stats = client_statistics(np.array([1, 0, 0, 1]), [np.array([0]), np.array([], dtype=int), np.array([1, 2, 3])], 2)
    profiles = [
        DeviceProfile(shots=1, depolarizing=0.0, readout_error=0.0, latency_s=0.5, availability=1.0),
        DeviceProfile(shots=None, depolarizing=0.3, readout_error=0.0, latency_s=1.0, availability=1.0),
        DeviceProfile(shots=4, depolarizing=0.0, readout_error=0.1, latency_s=4.0, availability=1.0),
    ]
    config = SimpleNamespace(circuit=SimpleNamespace(n_layers=2), training=SimpleNamespace(batch_size=2))
    fed = SimpleNamespace(
        n_classes=2,
        client_stats=stats,
        profiles=profiles,
        config=config,
        spec=SimpleNamespace(n_circuit_params=3),
        executions_per_sample=1 + 2 * 3,  # a VQC's parameter-shift gradient
    )
    layout = ObservationLayout(3, "v1")
    c = static_client_features(fed, layout, shot_price=0.5, cost_scale=4.0)
    expected = {
        "data_size": [1 / 3, 0.0, 1.0],
        "label_frac_0": [0.0, 0.0, 2 / 3],
        "label_frac_1": [1.0, 0.0, 1 / 3],
        "noise_level": [0.0, 1 - (1 - 0.4) ** 2, 1 - 0.8],
        "shot_noise": [1.0, 0.0, 0.5],
        "latency": [0.125, 0.25, 1.0],
        # one step: min(size, 2) samples x (1 + 2 x 3) executions, x latency (x shots x price) / cost_scale
        "step_time": [7 * 0.5 / 4, 0.0, 14 * 4.0 / 4],
        "step_shot_cost": [0.5 * 7 * 1 / 4, 0.0, 0.5 * 14 * 4 / 4],
    }
    index = layout.client_index
    for name, values in expected.items():
        np.testing.assert_allclose(c[:, index[name]], values, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(c[:, index["label_skew"]], [s.skew for s in stats], rtol=1e-6)  # NaN if empty
    written_by_the_env = [index[n] for n in layout.client_features if n not in expected and n != "label_skew"]
    assert len(written_by_the_env) == 14 and not c[:, written_by_the_env].any()


def test_layout_converts_flat_dict_and_batched_observations():
    layout = ObservationLayout(3, "v1")
    assert layout.features == "v1" and layout.n_client_features == len(CLIENT_FEATURES_V1)
    f, size = layout.n_client_features, layout.size
    obs = np.arange(size, dtype=np.float32)
    clients, global_ = obs[: 3 * f].reshape(3, f), obs[3 * f :]
    as_dict = layout.to_dict(obs)
    np.testing.assert_array_equal(as_dict["clients"], clients)
    np.testing.assert_array_equal(as_dict["global"], global_)
    again = layout.to_dict({"clients": clients, "global": global_})
    assert list(again) == ["clients", "global"] and not np.shares_memory(again["clients"], clients)
    np.testing.assert_array_equal(again["clients"], clients)
    np.testing.assert_array_equal(again["global"], global_)
    flat = layout.to_flat(as_dict)
    assert flat.dtype == np.float32 and flat.tolist() == obs.tolist()
    batch = np.stack([obs, obs + 100.0])  # [2, size], as from a VecEnv
    batch_dict = layout.to_dict(batch)
    assert batch_dict["clients"].shape == (2, 3, f) and batch_dict["global"].shape == (2, len(GLOBAL_FEATURES_V1))
    np.testing.assert_array_equal(batch_dict["clients"][1], clients + 100.0)
    np.testing.assert_array_equal(layout.to_flat(batch_dict), batch)
    copy = layout.to_flat(batch)
    assert copy.tolist() == batch.tolist() and not np.shares_memory(copy, batch)
    with pytest.raises(KeyError, match="allowed: data_size, label_skew"):
        layout.client(obs, "nope")
    with pytest.raises(KeyError, match="allowed: round_fraction, val_accuracy"):
        layout.global_(obs, "nope")
    with pytest.raises(ValueError, match="allowed: v0, v1"):
        ObservationLayout(3, "v2")
