"""Backends: registry, ClientNoise, torch vs PennyLane (outputs and gradients), noise, shots, helpers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from qflgym.qfl_core.backends import BACKENDS, Backend, ClientNoise, PennyLaneBackend, TorchBackend, make_backend
from qflgym.qfl_core.backends.base import GeneratorRuns
from qflgym.qfl_core.backends.linalg import kron_matrices, kron_vectors, kron_vectors_grad
from qflgym.qfl_core.backends.pauli import pauli_cnot_table
from qflgym.qfl_core.backends.sampling import sample_counts, shot_estimates
from qflgym.qfl_core.circuits import CircuitSpec, z_signs
from qflgym.qfl_core.config import BackendConfig


def backends(spec: CircuitSpec, **pennylane: object) -> tuple[TorchBackend, PennyLaneBackend]:
    torch_backend = make_backend(spec, BackendConfig(name="torch"))
    pl_backend = make_backend(spec, BackendConfig(name="pennylane", **pennylane))
    assert isinstance(torch_backend, TorchBackend) and isinstance(pl_backend, PennyLaneBackend)
    return torch_backend, pl_backend


def draw(spec: CircuitSpec, clients: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    weights = torch.tensor(rng.uniform(0, 2 * np.pi, (clients, *spec.weight_shape)), requires_grad=True)
    x = torch.tensor(rng.uniform(0, np.pi, (clients, batch, spec.n_qubits)))
    return weights, x


def value_and_grad(
    backend: Backend, weights: torch.Tensor, x: torch.Tensor, noise: ClientNoise, cotangent: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    z = backend.expvals(weights, x, noise, torch.Generator().manual_seed(seed))
    (grad,) = torch.autograd.grad((z * cotangent).sum(), weights)
    return z.detach(), grad


# ---------------------------------------------------------------- registry and contract
def test_registry() -> None:
    assert {"torch", "pennylane"} <= set(BACKENDS.names())
    spec = CircuitSpec(2, 1)
    assert isinstance(make_backend(spec, BackendConfig()), TorchBackend)
    assert isinstance(make_backend(spec, BackendConfig(name="pennylane")), PennyLaneBackend)
    with pytest.raises(KeyError, match="allowed"):
        BACKENDS.get("qiskit")


def test_importing_backends_does_not_import_pennylane() -> None:
    code = "import sys, qflgym.qfl_core.backends, qflgym.qfl_core.config; print('pennylane' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_client_noise() -> None:
    exact = ClientNoise.exact(3)
    assert len(exact) == exact.n_clients == 3 and exact.noiseless and exact.is_exact and not exact.has_shots
    noise = ClientNoise((100, None, 5), (0.0, 0.1, 0.0), (0.0, 0.0, 0.2))
    assert not noise.noiseless and noise.has_shots and not noise.is_exact
    assert noise.select([2, 0]) == ClientNoise((5, 100), (0.0, 0.0), (0.2, 0.0))
    assert ClientNoise.uniform(2, shots=10).shots == (10, 10)
    assert ClientNoise.uniform(2, shots=10).noiseless
    with pytest.raises(ValueError, match="one entry per client"):
        ClientNoise((None,), (0.0, 0.0), (0.0,))
    with pytest.raises(ValueError, match="depolarizing"):
        ClientNoise((None,), (0.8,), (0.0,))
    with pytest.raises(ValueError, match="readout_error"):
        ClientNoise((None,), (0.0,), (-0.1,))
    with pytest.raises(ValueError, match="shots"):
        ClientNoise((0,), (0.0,), (0.0,))


def test_input_validation() -> None:
    spec = CircuitSpec(3, 2)
    backend = make_backend(spec, BackendConfig())
    weights, x = draw(spec, 2, 4, 0)
    gen = torch.Generator()
    with pytest.raises(ValueError, match="x must be"):
        backend.expvals(weights, x[..., :2], ClientNoise.exact(2), gen)
    with pytest.raises(ValueError, match="noise describes"):
        backend.expvals(weights, x, ClientNoise.exact(3), gen)
    with pytest.raises(ValueError, match="weights must"):
        backend.expvals(weights[:, :1], x, ClientNoise.exact(2), gen)


@pytest.mark.parametrize("name", ["torch", "pennylane"])
def test_no_clients(name: str) -> None:
    spec = CircuitSpec(3, 2)
    backend = make_backend(spec, BackendConfig(name=name))
    weights, x = draw(spec, 2, 4, 0)
    z = backend.expvals(weights[:0], x[:0], ClientNoise.exact(0), torch.Generator())
    assert z.shape == (0, 4, 3)


# ---------------------------------------------------------------- torch vs PennyLane, noiseless
def _random_cases(seed: int) -> list[tuple[int, int, bool, str]]:
    """Two seeded random circuits per size from 1 to 6 qubits (with and without re-uploading), plus 7 and 8."""
    rng = np.random.default_rng(seed)
    cases = [
        (q, int(rng.integers(1, 4)), reupload, str(rng.choice(["ring", "long_range"])))
        for q in range(1, 7)
        for reupload in (False, True)
    ]
    return [*cases, (7, 3, True, "ring"), (8, 2, False, "long_range")]


@pytest.mark.parametrize(("q", "layers", "reupload", "entangler"), _random_cases(seed=2024))
def test_torch_matches_pennylane(q: int, layers: int, reupload: bool, entangler: str) -> None:
    spec = CircuitSpec(q, layers, reupload, entangler)  # type: ignore[arg-type]
    torch_backend, pl_backend = backends(spec)
    clients, batch = (3, 4) if q < 7 else (2, 2)
    weights, x = draw(spec, clients, batch, seed=q * 100 + layers)
    noise = ClientNoise.exact(clients)
    cotangent = torch.randn(clients, batch, q, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z_ref, grad_ref = value_and_grad(pl_backend, weights, x, noise, cotangent)
    engines = (["dense", "split"] if q > 1 else ["dense"]) + ([] if reupload else ["unitary"])
    for engine in engines:  # every engine is exact for every size
        torch_backend.engine = engine
        z, grad = value_and_grad(torch_backend, weights, x, noise, cotangent)
        torch.testing.assert_close(z, z_ref, atol=1e-9, rtol=0)
        torch.testing.assert_close(grad, grad_ref, atol=1e-9, rtol=0)


def test_eval_mode_matches_training_mode() -> None:
    spec = CircuitSpec(6, 2, reupload=True)
    backend = make_backend(spec, BackendConfig())
    weights, x = draw(spec, 2, 5, 3)
    noise = ClientNoise.exact(2)
    with torch.no_grad():
        z_eval = backend.expvals(weights, x, noise, torch.Generator())
    z_train = backend.expvals(weights, x, noise, torch.Generator())
    assert z_train.requires_grad and not z_eval.requires_grad
    torch.testing.assert_close(z_eval, z_train.detach(), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("q", "reupload", "noise"), [(3, False, None), (4, True, None), (3, False, 0.1), (2, True, 0.2)]
)
def test_gradcheck(q: int, reupload: bool, noise: float | None) -> None:
    spec = CircuitSpec(q, 2, reupload)
    backend = make_backend(spec, BackendConfig())
    weights, x = draw(spec, 2, 2, 7)
    client_noise = ClientNoise.exact(2) if noise is None else ClientNoise.uniform(2, depolarizing=noise)

    def f(w: torch.Tensor) -> torch.Tensor:
        return backend.expvals(w, x, client_noise, torch.Generator())

    assert torch.autograd.gradcheck(f, (weights,), eps=1e-6, atol=1e-6)


def test_float32() -> None:
    spec = CircuitSpec(4, 2)
    backend = make_backend(spec, BackendConfig(dtype="float32"))
    weights, x = draw(spec, 2, 3, 5)
    z64, g64 = value_and_grad(backend, weights, x, ClientNoise.exact(2), torch.ones(2, 3, 4, dtype=torch.float64))
    w32 = weights.detach().float().requires_grad_()
    z32, g32 = value_and_grad(backend, w32, x.float(), ClientNoise.exact(2), torch.ones(2, 3, 4))
    assert z32.dtype == g32.dtype == torch.float32
    torch.testing.assert_close(z32.double(), z64, atol=1e-5, rtol=0)
    torch.testing.assert_close(g32.double(), g64, atol=1e-4, rtol=0)


def test_pennylane_loop_matches_broadcast() -> None:
    spec = CircuitSpec(3, 2, reupload=True)
    loop = make_backend(spec, BackendConfig(name="pennylane", broadcast=False))
    broadcast = make_backend(spec, BackendConfig(name="pennylane"))
    weights, x = draw(spec, 2, 3, 11)
    noise = ClientNoise.exact(2)
    cotangent = torch.ones(2, 3, 3, dtype=torch.float64)
    z1, g1 = value_and_grad(loop, weights, x, noise, cotangent)
    z2, g2 = value_and_grad(broadcast, weights, x, noise, cotangent)
    torch.testing.assert_close(z1, z2, atol=1e-12, rtol=0)
    torch.testing.assert_close(g1, g2, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- noise
@pytest.mark.parametrize(
    ("q", "layers", "reupload", "entangler"),
    [
        (1, 2, False, "long_range"),
        (2, 2, True, "ring"),
        (3, 2, False, "long_range"),
        (3, 3, True, "long_range"),
        (4, 2, False, "ring"),
    ],
)
def test_noise_matches_default_mixed(q: int, layers: int, reupload: bool, entangler: str) -> None:
    spec = CircuitSpec(q, layers, reupload, entangler)  # type: ignore[arg-type]
    torch_backend, pl_backend = backends(spec)
    weights, x = draw(spec, 3, 3, seed=q + 10 * layers)
    noise = ClientNoise((None,) * 3, (0.1, 0.0, 0.3), (0.05, 0.2, 0.0))  # mixed: depolarizing, readout, both
    cotangent = torch.randn(3, 3, q, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    z_ref, grad_ref = value_and_grad(pl_backend, weights, x, noise, cotangent)
    z, grad = value_and_grad(torch_backend, weights, x, noise, cotangent)
    torch.testing.assert_close(z, z_ref, atol=1e-9, rtol=0)
    torch.testing.assert_close(grad, grad_ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    ("q", "reupload", "engine"), [(3, False, "dense"), (3, True, "split"), (4, False, "split"), (2, True, "dense")]
)
def test_outcome_probabilities(q: int, reupload: bool, engine: str) -> None:
    """The distributions that shots are drawn from, noiseless and depolarized, against PennyLane's probs."""
    import pennylane as qp

    spec = CircuitSpec(q, 2, reupload)
    backend = make_backend(spec, BackendConfig())
    backend.engine = engine
    weights, x = draw(spec, 2, 3, 4)
    weights = weights.detach()
    noise = ClientNoise((None,) * 2, (0.15, 0.0), (0.0, 0.0))
    _, noisy = backend.pauli.run(weights, x, noise, need_probs=True)
    _, saved = backend.statevector.forward(weights, x, save=False)
    pure = backend.statevector.probabilities(saved.psi)

    @qp.qnode(qp.device("default.mixed", wires=q))
    def probs(xb: torch.Tensor, w: torch.Tensor, p: float) -> object:
        spec._layers(xb, w, p)
        return qp.probs(wires=range(q))

    for c in range(2):
        expected = torch.as_tensor(probs(x[c], weights[c], noise.depolarizing[c]))
        assert noisy is not None
        torch.testing.assert_close(noisy[c], expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(pure[1], torch.as_tensor(probs(x[1], weights[1], 0.0)), atol=1e-12, rtol=0)


def test_pauli_cnot_table_matches_matrices() -> None:
    import pennylane as qp

    paulis = [np.eye(2), np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.diag([1.0, -1.0])]

    def string(index: int, q: int) -> np.ndarray:
        out = np.eye(1)
        for k in range(q):
            out = np.kron(out, paulis[(index // 4 ** (q - 1 - k)) % 4])
        return out

    for q, r in [(2, 1), (3, 1), (3, 2), (4, 3)]:

        def block(q: int = q, r: int = r) -> None:
            for control in range(q):
                qp.CNOT(wires=[control, (control + r) % q])

        cnots = qp.matrix(block, wire_order=range(q))()
        source, sign = pauli_cnot_table(q, r)
        for index in range(4**q):
            conjugated = cnots.conj().T @ string(index, q) @ cnots  # C^dag P C
            np.testing.assert_allclose(conjugated, sign[index] * string(int(source[index]), q), atol=1e-12)


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


# ---------------------------------------------------------------- helpers
def test_kron_helpers() -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, 2, dtype=torch.complex128, generator=gen)
    expected = torch.stack([torch.kron(torch.kron(v[i, 0], v[i, 1]), v[i, 2]) for i in range(2)])
    torch.testing.assert_close(kron_vectors(v), expected)
    m = torch.randn(5, 2, 2, dtype=torch.complex128, generator=gen)
    expected_m = m[0]
    for k in range(1, 5):
        expected_m = torch.kron(expected_m, m[k])
    torch.testing.assert_close(kron_matrices(m), expected_m)
    assert kron_vectors(v[:, :0]).shape == (2, 1)
    # gradient of the Kronecker product of vectors, against autograd
    v.requires_grad_(True)
    grad_out = torch.randn(2, 8, dtype=torch.complex128, generator=gen)
    # L = Re <grad_out, kron(v)> has PyTorch gradient grad_out with respect to the product
    (auto,) = torch.autograd.grad((kron_vectors(v) * grad_out.conj()).real.sum(), v)
    torch.testing.assert_close(kron_vectors_grad(grad_out, v.detach()), auto)


@pytest.mark.parametrize("depolarizing", [0.0, 0.1])
def test_torch_rejects_inputs_that_require_grad(depolarizing: float) -> None:
    """Gradients w.r.t. the features are not computed: asking for them is an error, not a silent ``None``."""
    spec = CircuitSpec(3, 2)
    backend = make_backend(spec, BackendConfig())
    weights, x = draw(spec, 2, 3, 0)
    noise = ClientNoise.uniform(2, depolarizing=depolarizing)
    with pytest.raises(ValueError, match="x requires a gradient"):
        backend.expvals(weights, x.requires_grad_(True), noise, torch.Generator())
    with torch.no_grad():  # no gradient asked for: fine
        assert backend.expvals(weights, x, noise, torch.Generator()).shape == (2, 3, 3)


def test_split_engine_builds_no_dense_tables() -> None:
    """Above the dense limit only the split tables exist (the dense index table grows as 4^Q)."""
    spec = CircuitSpec(8, 2)
    backend = make_backend(spec, BackendConfig())
    assert backend.engine == "split"
    weights, x = draw(spec, 1, 2, 0)
    backend.expvals(weights, x, ClientNoise.exact(1), torch.Generator())
    consts = backend.statevector.const(torch.float64, torch.device("cpu"))
    assert consts["kron_dense"] is None


@pytest.mark.parametrize(
    ("q", "readout", "readout_error"),
    [(1, "linear", 0.0), (3, "grouping", 0.0), (4, "linear", 0.1), (6, "linear", 0.0)],
)
def test_fused_loss_and_grad_matches_autograd(q: int, readout: str, readout_error: float) -> None:
    """The hand-written loss-and-gradient (unitary and gate-by-gate engines) against autograd through expvals."""
    spec = CircuitSpec(q, 2, readout=readout, n_classes=2 if readout == "grouping" else 3)  # type: ignore[arg-type]
    backend = make_backend(spec, BackendConfig())
    rng = np.random.default_rng(q)
    params = torch.tensor(rng.normal(0, 1, (3, spec.n_params)))
    x = torch.tensor(rng.uniform(0, np.pi, (3, 5, q)))
    y = torch.tensor(rng.integers(0, spec.n_classes, (3, 5)))
    mask = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] + [0.0] * 4], dtype=torch.float64)
    noise = ClientNoise.uniform(3, readout_error=readout_error)
    backend.engine = "dense"
    loss_ref, grad_ref = Backend.loss_and_grad(backend, params, x, y, mask, noise, torch.Generator())
    for engine in ["unitary", "dense"] + (["split"] if q > 1 else []):
        backend.engine = engine
        loss, grad = backend.loss_and_grad(params, x, y, mask, noise, torch.Generator())
        torch.testing.assert_close(loss, loss_ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(grad, grad_ref, atol=1e-12, rtol=0)


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


def test_unitary_engine_needs_no_reupload() -> None:
    backend = make_backend(CircuitSpec(3, 2, reupload=True), BackendConfig())
    assert backend.engine == "dense"
    backend.engine = "unitary"
    with pytest.raises(ValueError, match="reupload=False"):
        backend.statevector  # noqa: B018


def test_unitary_engine_shares_the_unitary_of_equal_rows() -> None:
    """Without a backward, rows with equal weights share one unitary: the same bits as computing each."""
    spec = CircuitSpec(4, 2)
    backend = make_backend(spec, BackendConfig())
    assert backend.engine == "unitary"
    weights, x = draw(spec, 3, 5, 1)
    repeated = weights.detach()[[0, 1, 0, 2, 1, 0]]
    x6 = torch.cat([x, x])
    with torch.no_grad():
        shared = backend.expvals(repeated, x6, ClientNoise.exact(6), torch.Generator())
    separate = backend.expvals(repeated.requires_grad_(True), x6, ClientNoise.exact(6), torch.Generator())
    assert torch.equal(shared, separate.detach())
