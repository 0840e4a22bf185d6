import dataclasses
import math

import numpy as np
import pytest
import torch

from qflgym.config import ConfigError
from qflgym.qfl_core import Federation, FederationConfig
from qflgym.qfl_core.clients import draw_profiles
from qflgym.qfl_core.config import ClientsConfig

SMALL = {"clients": {"n_clients": 6}, "data": {"max_samples": 300}}
NOISY = {
    "clients": {
        "n_clients": 5,
        "shots": [64, 256, None],
        "depolarizing": [0.0, 0.02],
        "readout_error": [0.0, 0.03],
        "availability": [0.5, 1.0],
    },
    "data": {"max_samples": 200},
    "training": {"local_steps": 2, "batch_size": 8},
}


def _fed(overrides: dict, seed: int = 0) -> Federation:
    return Federation(FederationConfig.from_preset("default", overrides), seed=seed)


def _rollout(fed: Federation, rounds: int, k: int = 3):
    rng = np.random.default_rng(123)
    return [fed.run_round(rng.choice(fed.n_clients, size=k, replace=False), lr=0.2) for _ in range(rounds)]


def test_same_seed_identical_reports_with_shots_and_noise():
    a, b = _fed(NOISY, seed=7), _fed(NOISY, seed=7)
    assert any(p.shots for p in a.profiles)
    ra, rb = _rollout(a, 4), _rollout(b, 4)
    assert ra == rb
    assert sum(r.shots_used for r in ra) > 0
    assert torch.equal(a.params, b.params)


def test_different_seed_differs():
    assert _rollout(_fed(NOISY, seed=1), 2) != _rollout(_fed(NOISY, seed=2), 2)


def test_snapshot_restore_is_exact():
    fed = _fed(NOISY, seed=3)
    _rollout(fed, 2)
    state = fed.state_dict()
    expected = fed.run_round([0, 1, 2, 3], lr=0.3, local_steps=2)
    fed.run_round([4])
    fed.load_state_dict(state)
    assert fed.run_round([0, 1, 2, 3], lr=0.3, local_steps=2) == expected
    fresh = _fed(NOISY, seed=3)
    fresh.load_state_dict(state)
    assert fresh.run_round([0, 1, 2, 3], lr=0.3, local_steps=2) == expected


def test_snapshot_from_other_seed_is_rejected():
    with pytest.raises(ConfigError, match="another config or seed"):
        _fed(SMALL, seed=1).load_state_dict(_fed(SMALL, seed=2).state_dict())


def test_adaptive_server_state_is_part_of_the_snapshot():
    fed = _fed({**SMALL, "strategy": {"name": "fedadam"}}, seed=0)
    fed.run_round([0, 1])
    state = fed.state_dict()
    expected = fed.run_round([2, 3])
    fed.run_round([1])
    fed.load_state_dict(state)
    assert fed.run_round([2, 3]) == expected


def test_empty_selection_is_a_round_where_time_passes():
    fed = _fed(SMALL)
    before = fed.params.clone()
    report = fed.run_round([])
    assert torch.equal(fed.params, before)
    assert report.participants == () and report.bytes_uploaded == 0 and report.shots_used == 0
    assert report.wall_time_s == pytest.approx(fed.config.server_time_s)
    assert report.round == 1 and not math.isnan(report.val_accuracy)


def test_costs_follow_the_cost_model():
    fed = _fed(NOISY, seed=5)
    for report in _rollout(fed, 3, k=4):
        assert set(report.participants) | set(report.dropped) == set(report.selected)
        assert report.bytes_uploaded == fed.param_bytes * len(report.participants)
        per_sample = 1 + 2 * fed.spec.n_circuit_params
        slowest = 0.0
        for c in report.clients:
            profile = fed.profiles[c.client_id]
            assert c.circuit_executions == c.samples_used * per_sample
            assert c.shots_used == c.circuit_executions * (profile.shots or 0)
            assert c.wall_time_s == pytest.approx(c.circuit_executions * profile.latency_s)
            slowest = max(slowest, c.wall_time_s)
        assert report.wall_time_s == pytest.approx(slowest + fed.config.server_time_s)
        assert report.shots_used == sum(c.shots_used for c in report.clients)
        assert report.circuit_executions == sum(c.circuit_executions for c in report.clients) > 0
        assert report.bytes_downloaded == report.bytes_uploaded
    assert fed.param_bytes == fed.n_params * 8  # float64 parameters


def test_latency_is_drawn_log_uniformly_over_its_range():
    low, high = 1e-4, 1e-1
    config = ClientsConfig(n_clients=1000, latency_s=(low, high))
    latency = np.array([p.latency_s for p in draw_profiles(config, np.random.default_rng(7))])
    assert low <= latency.min() and latency.max() <= high
    # log10 of a log-uniform draw is uniform on [-4, -1]: quartiles at -3.25, -2.5, -1.75 (a uniform draw's
    # median would be near 0.05, log10 -1.3)
    quartiles = np.quantile(np.log10(latency), [0.25, 0.5, 0.75])
    np.testing.assert_allclose(quartiles, [-3.25, -2.5, -1.75], atol=0.1)
    # the same generator drawn directly (nothing else is drawn before the latency with these settings)
    expected = np.exp(np.random.default_rng(7).uniform(math.log(low), math.log(high), size=1000))
    np.testing.assert_allclose(latency, expected, rtol=1e-12)


def test_offline_clients_are_announced_and_drop_out():
    fed = _fed({**SMALL, "clients": {"n_clients": 6, "availability": 0.5}}, seed=0)
    dropped = 0
    for _ in range(10):
        offline = set(np.flatnonzero(~fed.available).tolist())
        report = fed.run_round(range(6))
        assert set(report.dropped) == offline
        assert set(report.participants) == set(range(6)) - offline
        dropped += len(report.dropped)
    assert 10 <= dropped <= 50  # 60 draws at p = 0.5


def test_training_learns_the_task():
    fed = _fed({}, seed=0)
    first = fed.run_round(range(fed.n_clients))
    for _ in range(60):
        last = fed.run_round(range(fed.n_clients))
    assert last.val_loss < first.val_loss - 0.2
    assert last.val_accuracy > max(0.6, first.val_accuracy + 0.2)


def test_local_training_lowers_client_loss():
    fed = _fed(SMALL, seed=0)
    report = fed.run_round(range(fed.n_clients), lr=0.3, local_steps=5)
    assert np.mean([c.loss_after < c.loss_before for c in report.clients]) >= 0.8


def test_fedprox_pulls_clients_toward_global_model():
    plain = _fed({**SMALL, "strategy": {"name": "fedavg"}}, seed=0).run_round(range(6), local_steps=5)
    prox = _fed({**SMALL, "strategy": {"name": "fedprox", "proximal_mu": 5.0}}, seed=0).run_round(
        range(6), local_steps=5
    )
    assert np.mean([c.update_norm for c in prox.clients]) < np.mean([c.update_norm for c in plain.clients])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"selected": [0, 0]}, "distinct"),
        ({"selected": [99]}, r"in \[0, 5\]"),
        ({"selected": np.ones(3, dtype=bool)}, r"shape \(6,\)"),
        ({"selected": [0], "lr": -0.1}, "lr"),
        ({"selected": [0], "lr": float("nan")}, "lr"),
        ({"selected": [0], "local_steps": 0}, "local_steps"),
        ({"selected": [0], "local_steps": 1.5}, "local_steps"),
    ],
)
def test_bad_round_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _fed(SMALL).run_round(**kwargs)


def test_boolean_mask_equals_ids():
    a, b = _fed(SMALL), _fed(SMALL)
    mask = np.zeros(6, dtype=bool)
    mask[[1, 4]] = True
    assert dataclasses.asdict(a.run_round(mask)) == dataclasses.asdict(b.run_round([4, 1]))


def test_evaluate_matches_the_round_report_and_a_direct_evaluation():
    fed = _fed(SMALL, seed=4)
    report = fed.run_round([0, 1, 2])
    ev = fed.evaluate()
    assert (ev["val_accuracy"], ev["val_loss"]) == (report.val_accuracy, report.val_loss)
    # direct: the global model on the whole validation split in one row
    x = torch.as_tensor(fed.data.x_val, dtype=fed.dtype)[None]
    logits = fed.pool.logits(fed.params[None], x, fed._eval_noise.select([0]), fed.generator)[0]
    y = torch.as_tensor(fed.data.y_val)
    assert ev["val_accuracy"] == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=1e-12)
    assert ev["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-10)


def test_test_metrics_are_nan_when_switched_off():
    report = _fed({**SMALL, "evaluate_test": False}).run_round([0])
    assert math.isnan(report.test_accuracy) and math.isnan(report.test_loss)
    assert not math.isnan(report.val_accuracy)
