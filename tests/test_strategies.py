import math

import pytest
import torch

from qflgym.qfl_core.config import StrategyConfig
from qflgym.qfl_core.optim import OPTIMIZERS
from qflgym.qfl_core.strategies import STRATEGIES, FedProx, weighted_average

CLIENTS = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
EXAMPLES = torch.tensor([1, 3])
CFG = StrategyConfig(server_lr=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)


def test_weighted_average_by_hand():
    # (1*1 + 3*3) / 4 = 2.5 ; (1*2 + 3*4) / 4 = 3.5
    assert weighted_average(CLIENTS, EXAMPLES).tolist() == [2.5, 3.5]


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_and_fedprox_aggregate_to_weighted_mean(name):
    strategy = STRATEGIES.get(name)(CFG)
    out = strategy.aggregate_fit(torch.zeros(2, dtype=torch.float64), CLIENTS, EXAMPLES)
    assert out.tolist() == [2.5, 3.5]


def test_fedprox_sends_mu_and_fedavg_does_not():
    assert FedProx(StrategyConfig(proximal_mu=0.3)).configure_fit(0.1, 2).proximal_mu == 0.3
    assert STRATEGIES.get("fedavg")(StrategyConfig(proximal_mu=0.3)).configure_fit(0.1, 2).proximal_mu == 0.0


def _server_step(delta, v_new):
    m = (1 - 0.9) * delta
    return 0.1 * m / (math.sqrt(v_new) + 1e-3)


@pytest.mark.parametrize(
    ("name", "v_rule"),
    [
        ("fedadam", lambda d: 0.99 * 1e-6 + 0.01 * d * d),  # beta2 v + (1 - beta2) d^2, v0 = tau^2
        ("fedyogi", lambda d: 1e-6 + 0.01 * d * d),  # v - (1 - beta2) d^2 sign(v - d^2) with v < d^2
        ("fedadagrad", lambda d: 1e-6 + d * d),  # v + d^2
    ],
)
def test_adaptive_first_round_by_hand(name, v_rule):
    strategy = STRATEGIES.get(name)(CFG)
    x0 = torch.tensor([1.0, -1.0], dtype=torch.float64)
    out = strategy.aggregate_fit(x0, CLIENTS, EXAMPLES)
    deltas = [2.5 - 1.0, 3.5 + 1.0]
    expected = [x + _server_step(d, v_rule(d)) for x, d in zip(x0.tolist(), deltas, strict=True)]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)


def test_yogi_second_moment_shrinks_when_above_delta_squared():
    strategy = STRATEGIES.get("fedyogi")(CFG)
    x = torch.zeros(2, dtype=torch.float64)
    strategy.v = torch.tensor([10.0, 10.0], dtype=torch.float64)
    strategy.m = torch.zeros(2, dtype=torch.float64)
    strategy.aggregate_fit(x, CLIENTS, EXAMPLES)
    # v - (1 - beta2) d^2 sign(v - d^2) = 10 - 0.01 * 6.25 for d = 2.5
    assert strategy.v[0].item() == pytest.approx(10.0 - 0.01 * 6.25)


def test_adaptive_state_round_trip():
    a = STRATEGIES.get("fedadam")(CFG)
    x = torch.zeros(2, dtype=torch.float64)
    x = a.aggregate_fit(x, CLIENTS, EXAMPLES)
    b = STRATEGIES.get("fedadam")(CFG)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.aggregate_fit(x, CLIENTS, EXAMPLES), b.aggregate_fit(x, CLIENTS, EXAMPLES))


def test_sgd_and_adam_steps_by_hand():
    p = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    g = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    assert OPTIMIZERS.get("sgd")(p, 0.1).step(p, g).tolist() == [[0.95, 2.1]]
    # first Adam step moves every coordinate by lr * sign(g) (up to eps)
    out = OPTIMIZERS.get("adam")(p, 0.1).step(p, g)
    assert out.tolist()[0] == pytest.approx([0.9, 2.1], abs=1e-6)


def test_unknown_strategy_names_allowed():
    with pytest.raises(KeyError, match="allowed: fedadagrad, fedadam, fedavg, fedprox, fedyogi"):
        STRATEGIES.get("fedsgd")
