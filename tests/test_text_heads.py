"""Girotto-style head options (amplitude embedding, few-qubit readout) against PennyLane, and the classical heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qflgym.config import ConfigError
from qflgym.qfl_core.backends import ClientNoise, make_backend
from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.config import BackendConfig, FederationConfig
from qflgym.qfl_core.heads import HEADS, QuantumHead, matched_hidden
from qflgym.qfl_core.kinds import make_federation


def inputs(spec: CircuitSpec, clients: int = 2, batch: int = 3, seed: int = 0) -> torch.Tensor:
    x = torch.randn(clients, batch, spec.n_features, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True) if spec.embedding == "amplitude" else x


@pytest.mark.parametrize(
    ("q", "embedding", "reupload", "readout_qubits", "engine"),
    [
        (3, "amplitude", False, 1, "unitary"),
        (3, "amplitude", False, 2, "dense"),
        (4, "amplitude", False, 1, "split"),
        (4, "angle", True, 1, "dense"),
        (5, "angle", True, 2, "split"),
    ],
)
def test_head_options_match_pennylane(q, embedding, reupload, readout_qubits, engine):
    spec = CircuitSpec(
        n_qubits=q,
        n_layers=3,
        reupload=reupload,
        entangler="long_range",
        n_classes=2,
        embedding=embedding,
        readout_qubits=readout_qubits,
    )
    torch_backend = make_backend(spec, BackendConfig())
    torch_backend.engine = engine
    reference = make_backend(spec, BackendConfig(name="pennylane"))
    params = torch.stack([spec.init_params(np.random.default_rng(i)) for i in range(2)])
    x, y = inputs(spec), torch.tensor([[0, 1, 1], [1, 0, 0]])
    mask, noise, gen = torch.ones(2, 3, dtype=torch.float64), ClientNoise.exact(2), torch.Generator()
    weights, _ = spec.split(params)
    torch.testing.assert_close(
        torch_backend.expvals(weights, x, noise, gen), reference.expvals(weights, x, noise, gen), atol=1e-10, rtol=0
    )
    loss, grad = torch_backend.loss_and_grad(params, x, y, mask, noise, gen)
    ref_loss, ref_grad = reference.loss_and_grad(params, x, y, mask, noise, gen)
    torch.testing.assert_close(loss, ref_loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-10, rtol=0)
    assert spec.n_readout_params == readout_qubits * 2 + 2


def test_amplitude_embedding_with_shots_is_reproducible():
    spec = CircuitSpec(n_qubits=3, n_layers=2, embedding="amplitude", readout_qubits=1)
    backend = make_backend(spec, BackendConfig())
    weights, _ = spec.split(spec.init_params(np.random.default_rng(0)).unsqueeze(0))
    x = inputs(spec, clients=1, batch=4)
    noise = ClientNoise.uniform(1, shots=64)
    a = backend.expvals(weights, x, noise, torch.Generator().manual_seed(1))
    b = backend.expvals(weights, x, noise, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.all(torch.remainder(a * 64, 2) == 0)  # (n0 - n1) / 64 with n0 + n1 = 64


def test_bad_head_options_name_the_field():
    with pytest.raises(ConfigError, match=r"circuit.*reupload=false"):
        FederationConfig.from_dict({"circuit": {"embedding": "amplitude", "reupload": True}})
    with pytest.raises(ConfigError, match=r"circuit\.readout_qubits=5 exceeds circuit\.n_qubits=4"):
        FederationConfig.from_dict({"circuit": {"readout_qubits": 5}})
    with pytest.raises(ConfigError, match=r"model\.kind: unknown federation kind 'svm'.*logreg, mlp, vqc"):
        FederationConfig.from_dict({"model": {"kind": "svm"}})
    spec = CircuitSpec(n_qubits=2, n_layers=1, embedding="amplitude")
    weights, _ = spec.split(spec.init_params(np.random.default_rng(0)).unsqueeze(0))
    with pytest.raises(ValueError, match="embedding='amplitude' use backend 'pennylane'"):
        make_backend(spec, BackendConfig()).expvals(weights, inputs(spec, 1), ClientNoise.uniform(1, None, 0.01), None)


def test_quantum_head_layer_matches_the_backend_and_is_differentiable_in_its_inputs():
    spec = CircuitSpec(n_qubits=3, n_layers=2, reupload=True, readout_qubits=1)
    head = QuantumHead(spec, np.random.default_rng(0))
    x = inputs(spec, 1)[0].requires_grad_(True)
    logits = head(x)
    weights, readout = spec.split(head.theta.detach())
    z = make_backend(spec, BackendConfig()).expvals(weights[None], x.detach()[None], ClientNoise.exact(1), None)
    torch.testing.assert_close(logits.detach(), spec.logits(z, readout[None])[0], atol=1e-10, rtol=0)
    logits.sum().backward()
    assert x.grad is not None and torch.all(torch.isfinite(x.grad)) and x.grad.abs().sum() > 0


def test_classical_heads_have_comparable_size():
    config = FederationConfig.from_dict({"circuit": {"n_qubits": 6, "n_layers": 2, "reupload": True}})
    vqc_params = CircuitSpec.from_config(config.circuit, 2).n_params  # 36 weights + 6 * 2 + 2 readout
    mlp = HEADS.get("mlp")(6, 2, config, np.random.default_rng(0))
    count = sum(p.numel() for p in mlp.parameters())
    hidden = matched_hidden(6, 2, vqc_params)
    assert count >= vqc_params > count - (6 + 1 + 2)  # the smallest width that reaches the circuit's count
    assert count == 6 * hidden + hidden + hidden * 2 + 2
    assert sum(p.numel() for p in HEADS.get("logreg")(6, 2, config, np.random.default_rng(0)).parameters()) == 14


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_classical_heads_train_in_the_same_federation(kind):
    config = {"data": {"dataset": "breast_cancer"}, "model": {"kind": kind}, "training": {"lr": 0.5}}
    fed, vqc = make_federation(config, 0), make_federation({"data": {"dataset": "breast_cancer"}}, 0)
    assert [s.size for s in fed.client_stats] == [s.size for s in vqc.client_stats]  # same partition
    assert np.array_equal(fed.data.x_train, vqc.data.x_train)  # same features
    before = fed.evaluate()["val_accuracy"]
    for _ in range(15):
        report = fed.run_round([0, 2, 5])
    assert report.val_accuracy > max(before, 0.6)  # it learns
    assert report.bytes_uploaded == 3 * fed.n_params * 8 and report.shots_used == 0
    state = fed.state_dict()
    again = fed.run_round([1, 3])
    fed.load_state_dict(state)
    assert fed.run_round([1, 3]) == again
