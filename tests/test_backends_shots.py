"""Backends with finite shots: reproducible discrete draws, straight-through gradients, unbiased means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qflgym.qfl_core.backends import Backend, ClientNoise, make_backend
from qflgym.qfl_core.backends.base import GeneratorRuns
from qflgym.qfl_core.backends.sampling import sample_counts, shot_estimates
from qflgym.qfl_core.circuits import CircuitSpec, z_signs
from qflgym.qfl_core.config import BackendConfig

from .backend_cases import draw, value_and_grad


# ---------------------------------------------------------------- shots
def test_shots_reproducible_and_discrete() -> None:
    spec = CircuitSpec(4, 2)
    backend = make_backend(spec, BackendConfig())
    weights, x = draw(spec, 3, 6, 8)
    noise = ClientNoise((10, None, 1000), (0.0,) * 3, (0.0,) * 3)
    z1 = backend.expvals(weights, x, noise, torch.Generator().manual_seed(5))
    z2 = backend.expvals(weights, x, noise, torch.Generator().manual_seed(5))
    z3 = backend.expvals(weights, x, noise, torch.Generator().manual_seed(6))
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    exact = backend.expvals(weights, x, ClientNoise.exact(3), torch.Generator())
    assert torch.equal(z1[1], exact[1])  # the client without shots is exact
    for c, shots in ((0, 10), (2, 1000)):  # per-client shots: multiples of 2/S in [-1, 1]
        scaled = z1[c].detach() * shots / 2
        torch.testing.assert_close(scaled, scaled.round(), atol=1e-9, rtol=0)
        assert z1[c].abs().max() <= 1
    assert not torch.equal(z1[0], exact[0])


@pytest.mark.parametrize("depolarizing", [0.0, 0.1])
def test_generator_runs_draw_as_separate_calls(depolarizing: float) -> None:
    """One call over two federations' clients (``GeneratorRuns``) gives each the draws of its own call."""
    spec = CircuitSpec(3, 2)
    backend = make_backend(spec, BackendConfig())
    assert backend.shares_generators
    weights, x = draw(spec, 5, 6, 3)
    y, mask = torch.zeros(5, 6, dtype=torch.long), torch.ones(5, 6, dtype=torch.float64)
    params = torch.cat((weights.detach().flatten(1), torch.zeros(5, spec.n_readout_params, dtype=torch.float64)), 1)
    noise = ClientNoise((10, None, 300, None, 77), (depolarizing,) * 5, (0.0, 0.1, 0.05, 0.0, 0.2))
    parts = [(slice(0, 2), 5), (slice(2, 5), 6)]

    def runs() -> GeneratorRuns:
        return GeneratorRuns((2, 3), tuple(torch.Generator().manual_seed(seed) for _, seed in parts))

    joint_z = backend.expvals(weights, x, noise, runs())
    joint_loss, joint_grad = backend.loss_and_grad(params, x, y, mask, noise, runs())
    for rows, seed in parts:
        sub = noise.select(range(5)[rows])
        z = backend.expvals(weights[rows], x[rows], sub, torch.Generator().manual_seed(seed))
        loss, grad = backend.loss_and_grad(
            params[rows], x[rows], y[rows], mask[rows], sub, torch.Generator().manual_seed(seed)
        )
        assert torch.equal(joint_z[rows], z) and torch.equal(joint_loss[rows], loss)
        assert torch.equal(joint_grad[rows], grad)
    with pytest.raises(ValueError, match="runs cover 4 clients"):
        backend.expvals(weights, x, noise, GeneratorRuns((1, 3), runs().generators))


def test_prepared_inputs_give_the_same_bits() -> None:
    """``states=embed_inputs(x)`` (prepared once for fixed data) changes no value of a call; other engines: None."""
    spec = CircuitSpec(3, 2)
    backend = make_backend(spec, BackendConfig())
    weights, x = draw(spec, 3, 5, 4)
    states = backend.embed_inputs(x)
    assert backend.engine == "unitary" and states is not None and states.shape == (3, 5, 8)
    y, mask = torch.zeros(3, 5, dtype=torch.long), torch.ones(3, 5, dtype=torch.float64)
    params = torch.cat((weights.detach().flatten(1), torch.ones(3, spec.n_readout_params, dtype=torch.float64)), 1)
    noise = ClientNoise((None, 50, 9), (0.0,) * 3, (0.0, 0.1, 0.0))
    runs = []
    for kwargs in ({}, {"states": states}):
        z = backend.expvals(weights.detach(), x, noise, torch.Generator().manual_seed(1), **kwargs)
        loss, grad = backend.loss_and_grad(params, x, y, mask, noise, torch.Generator().manual_seed(1), **kwargs)
        runs.append((z, loss, grad))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    backend.engine = "dense"
    assert backend.embed_inputs(x) is None


def test_shots_straight_through_gradient() -> None:
    spec = CircuitSpec(3, 2)
    backend = make_backend(spec, BackendConfig())
    weights, x = draw(spec, 2, 4, 9)
    cotangent = torch.ones(2, 4, 3, dtype=torch.float64)
    _, grad_shots = value_and_grad(backend, weights, x, ClientNoise.uniform(2, shots=7), cotangent)
    _, grad_exact = value_and_grad(backend, weights, x, ClientNoise.exact(2), cotangent)
    torch.testing.assert_close(grad_shots, grad_exact, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("depolarizing", "readout_error", "reupload"),
    [(0.0, 0.0, False), (0.0, 0.1, True), (0.1, 0.05, False), (0.2, 0.0, True)],
)
def test_shot_mean_is_unbiased(depolarizing: float, readout_error: float, reupload: bool) -> None:
    spec = CircuitSpec(3, 2, reupload)
    backend = make_backend(spec, BackendConfig())
    weights, x = draw(spec, 2, 8, 12)
    shots = 40_000
    exact = backend.expvals(weights, x, ClientNoise.uniform(2, None, depolarizing, readout_error), torch.Generator())
    sampled = backend.expvals(weights, x, ClientNoise.uniform(2, shots, depolarizing, readout_error), torch.Generator())
    stderr = torch.sqrt((1 - exact.detach() ** 2).clamp_min(1e-12) / shots)
    assert ((sampled - exact).abs() <= 5 * stderr + 1e-12).all()


def test_pennylane_shots_reproducible() -> None:
    spec = CircuitSpec(2, 1)
    backend = make_backend(spec, BackendConfig(name="pennylane"))
    weights, x = draw(spec, 2, 3, 13)
    noise = ClientNoise((50, 20), (0.0, 0.1), (0.0, 0.1))
    z1 = backend.expvals(weights, x, noise, torch.Generator().manual_seed(1))
    z2 = backend.expvals(weights, x, noise, torch.Generator().manual_seed(1))
    assert torch.equal(z1, z2)
    torch.testing.assert_close(z1[0].detach() * 25, (z1[0].detach() * 25).round(), atol=1e-9, rtol=0)
    (grad,) = torch.autograd.grad(z1.sum(), weights)
    exact = ClientNoise((None, None), noise.depolarizing, noise.readout_error)
    (grad_exact,) = torch.autograd.grad(backend.expvals(weights, x, exact, torch.Generator()).sum(), weights)
    torch.testing.assert_close(grad, grad_exact)


def test_sample_counts_is_multinomial() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    repeats = 4000
    counts = sample_counts(probs.repeat(repeats, 1), torch.full((2 * repeats,), 10.0, dtype=torch.float64), gen)
    assert torch.equal(counts.sum(1), torch.full((2 * repeats,), 10.0, dtype=torch.float64))
    counts = counts.view(repeats, 2, 4)
    assert counts[:, 0, 1].sum() == 0  # impossible outcomes never occur
    mean = counts.mean(0)
    std = torch.sqrt(10 * probs * (1 - probs) / repeats)
    assert ((mean - 10 * probs).abs() <= 5 * std + 1e-12).all()
    # covariance of a multinomial: Cov(n_i, n_j) = -S p_i p_j
    cov = torch.cov(counts[:, 1].T)
    torch.testing.assert_close(cov[0, 3], torch.tensor(-10 * 0.1 * 0.4, dtype=torch.float64), atol=0.06, rtol=0)


@pytest.mark.parametrize("engine", ["unitary", "dense", "split"])
def test_fused_loss_and_grad_with_shots_is_autograds_bit_for_bit(engine: str) -> None:
    """Finite shots take the hand-written backward too: the same draws, loss and straight-through gradient."""
    spec = CircuitSpec(4, 2, n_classes=4)
    backend = make_backend(spec, BackendConfig())
    backend.engine = engine
    rng = np.random.default_rng(7)
    params = torch.tensor(rng.normal(0, 1, (4, spec.n_params)))
    x = torch.tensor(rng.uniform(0, np.pi, (4, 6, 4)))
    y = torch.tensor(rng.integers(0, 4, (4, 6)))
    mask = torch.ones(4, 6, dtype=torch.float64)
    mask[1, 4:] = 0.0
    noise = ClientNoise((64, None, 1024, 16), (0.0,) * 4, (0.05, 0.0, 0.0, 0.2))
    gen_ref, gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    loss_ref, grad_ref = Backend.loss_and_grad(backend, params, x, y, mask, noise, gen_ref)
    loss, grad = backend.loss_and_grad(params, x, y, mask, noise, gen)
    assert torch.equal(loss, loss_ref) and torch.equal(grad, grad_ref)
    assert torch.equal(gen.get_state(), gen_ref.get_state())


def reference_shot_means(
    probs: torch.Tensor, shots: float, readout_error: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """The shot sampling written in torch ops, the way it was before it moved to NumPy: ``[C, B, Q]``."""
    n_clients, batch, dim = probs.shape
    q = dim.bit_length() - 1
    r = readout_error.view(-1, 1, 1, 1)
    for qubit in range(q):
        pv = probs.reshape(n_clients, batch * 2**qubit, 2, -1)
        probs = ((1 - r) * pv + r * pv.flip(2)).reshape(probs.shape)
    n = n_clients * batch
    marginals = [probs.reshape(n, dim).clamp_min(0)]
    for _ in range(q):
        marginals.append(marginals[-1].view(n, -1, 2).sum(-1))
    marginals.reverse()
    counts = torch.full((n, 1), shots, dtype=probs.dtype)
    for k in range(q):
        pair = marginals[k + 1].view(n, 2**k, 2)
        total = pair.sum(-1)
        p_one = torch.where(total > 0, pair[..., 1] / total.clamp_min(torch.finfo(probs.dtype).tiny), 0.0)
        ones = torch.binomial(counts, p_one.clamp(0.0, 1.0), generator=gen)
        counts = torch.stack((counts - ones, ones), -1).view(n, 2 ** (k + 1))
    signs = torch.as_tensor(z_signs(q), dtype=probs.dtype)
    return ((counts @ signs) / shots).view(n_clients, batch, q)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shot_estimates_draw_what_torch_ops_draw(dtype: torch.dtype) -> None:
    """The NumPy arithmetic around the binomial draws gives the counts of the same steps in torch, bit for bit."""
    probs = torch.rand(5, 8, 16, dtype=dtype, generator=torch.Generator().manual_seed(0)) ** 4
    probs[..., 3] = 0.0
    probs = probs / probs.sum(-1, keepdim=True)
    flips = (0.0, 0.1, 0.0, 0.3, 0.05)
    noise = ClientNoise((500,) * 5 + (None,), (0.0,) * 6, (*flips, 0.0))
    z = torch.rand(6, 8, 4, dtype=dtype)
    readout = torch.tensor(flips, dtype=dtype)
    for seed in range(3):
        expected = reference_shot_means(probs, 500.0, readout, torch.Generator().manual_seed(seed))
        got = shot_estimates(z, torch.cat((probs, probs[:1])), noise, torch.Generator().manual_seed(seed))
        assert torch.equal(got[:5], expected) and torch.equal(got[5], z[5])
