"""Backends: registry, ClientNoise, torch vs PennyLane (outputs, gradients), noise, engines (shots: another file)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from qflgym.qfl_core.backends import BACKENDS, Backend, ClientNoise, PennyLaneBackend, TorchBackend, make_backend
from qflgym.qfl_core.backends.linalg import kron_matrices, kron_vectors, kron_vectors_grad
from qflgym.qfl_core.backends.pauli import pauli_cnot_table
from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.config import BackendConfig

from .backend_cases import backends, draw, value_and_grad


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
