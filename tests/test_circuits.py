"""CircuitSpec: parameter layout, readout, initialization, structure helpers and the PennyLane template."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qflgym.qfl_core.circuits import GROUPING_SCALE, CircuitSpec, z_signs
from qflgym.qfl_core.config import CircuitConfig


def make(q: int = 4, layers: int = 2, k: int = 3, readout: str = "linear", **kw: object) -> CircuitSpec:
    return CircuitSpec(n_qubits=q, n_layers=layers, readout=readout, n_classes=k, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- layout
@pytest.mark.parametrize(
    ("q", "layers", "k", "readout", "readout_params"),
    [
        (4, 2, 3, "linear", 4 * 3 + 3),
        (4, 2, 3, "grouping", 0),
        (1, 1, 2, "linear", 1 * 2 + 2),
        (8, 3, 10, "linear", 90),
    ],
)
def test_parameter_counts(q: int, layers: int, k: int, readout: str, readout_params: int) -> None:
    spec = make(q, layers, k, readout)
    assert spec.weight_shape == (layers, q, 3) == CircuitSpec.shape(layers, q)
    assert spec.n_circuit_params == layers * q * 3
    assert spec.n_readout_params == readout_params
    assert spec.n_params == layers * q * 3 + readout_params


def test_from_config() -> None:
    cfg = CircuitConfig(n_qubits=5, n_layers=3, reupload=True, entangler="ring", readout="grouping")
    spec = CircuitSpec.from_config(cfg, n_classes=4)
    assert (spec.n_qubits, spec.n_layers, spec.reupload, spec.entangler, spec.readout, spec.n_classes) == (
        5,
        3,
        True,
        "ring",
        "grouping",
        4,
    )


def test_ranges_follow_strongly_entangling_layers() -> None:
    assert make(4, 5, entangler="long_range").ranges() == (1, 2, 3, 1, 2)
    assert make(4, 3, entangler="ring").ranges() == (1, 1, 1)
    assert make(2, 3, entangler="long_range").ranges() == (1, 1, 1)
    assert make(1, 2, entangler="long_range").ranges() == (0, 0)
    # PennyLane's own default for StronglyEntanglingLayers
    q, layers = 5, 6
    assert make(q, layers).ranges() == tuple((layer % (q - 1)) + 1 for layer in range(layers))


def test_split_returns_views() -> None:
    spec = make(3, 2, 4)
    theta = torch.arange(2 * spec.n_params, dtype=torch.float64).view(2, -1)
    weights, readout = spec.split(theta)
    assert weights.shape == (2, 2, 3, 3) and readout.shape == (2, spec.n_readout_params)
    assert weights.data_ptr() == theta.data_ptr()
    theta[1, 0] = -7.0
    theta[0, -1] = -9.0
    assert weights[1, 0, 0, 0] == -7.0 and readout[0, -1] == -9.0
    assert torch.equal(weights.reshape(2, -1), theta[:, : spec.n_circuit_params])
    w1, r1 = spec.split(theta[0])
    assert w1.shape == (2, 3, 3) and r1.shape == (spec.n_readout_params,)
    with pytest.raises(ValueError, match="n_params"):
        spec.split(theta[:, :-1])


# ---------------------------------------------------------------- readout
def test_linear_logits() -> None:
    spec = make(4, 1, 3)
    c, b = 2, 5
    z = torch.randn(c, b, 4, dtype=torch.float64)
    readout = torch.randn(c, spec.n_readout_params, dtype=torch.float64)
    logits = spec.logits(z, readout)
    assert logits.shape == (c, b, 3)
    w, bias = readout[:, :12].view(c, 4, 3), readout[:, 12:]
    for i in range(c):
        torch.testing.assert_close(logits[i], z[i] @ w[i] + bias[i])
    torch.testing.assert_close(spec.logits(z[0], readout[0]), logits[0])


def test_grouping_logits() -> None:
    spec = make(5, 1, 2, "grouping")
    z = torch.randn(3, 4, 5, dtype=torch.float64)
    logits = spec.logits(z, torch.zeros(3, 0, dtype=torch.float64))
    assert logits.shape == (3, 4, 2)
    expected = GROUPING_SCALE * torch.stack((z[..., [0, 2, 4]].mean(-1), z[..., [1, 3]].mean(-1)), -1)
    torch.testing.assert_close(logits, expected)


def test_grouping_needs_enough_qubits() -> None:
    with pytest.raises(ValueError, match="grouping"):
        make(3, 1, 4, "grouping")
    make(4, 1, 4, "grouping")  # one qubit per class is fine


def test_logits_shape_errors() -> None:
    spec = make(4, 1, 3)
    with pytest.raises(ValueError, match="n_qubits"):
        spec.logits(torch.zeros(1, 2, 3), torch.zeros(1, spec.n_readout_params))
    with pytest.raises(ValueError, match="readout"):
        spec.logits(torch.zeros(1, 2, 4), torch.zeros(1, 3))


@pytest.mark.parametrize("kwargs", [{"n_qubits": 0}, {"n_layers": 0}, {"n_classes": 1}, {"entangler": "full"}])
def test_invalid_spec(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"n_qubits": 2, "n_layers": 1, "n_classes": 2}
    with pytest.raises(ValueError):
        CircuitSpec(**(base | kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------- init
def test_init_params() -> None:
    spec = make(4, 3, 5)
    theta = spec.init_params(np.random.default_rng(0), torch.float64)
    assert theta.shape == (spec.n_params,) and theta.dtype == torch.float64
    torch.testing.assert_close(theta, spec.init_params(np.random.default_rng(0), "float64"))
    assert not torch.equal(theta, spec.init_params(np.random.default_rng(1)))
    weights, readout = spec.split(theta)
    assert 0.05 < weights.std().item() < 0.8  # N(0, (0.1 pi)^2)
    assert torch.count_nonzero(readout[-5:]) == 0  # bias starts at zero
    assert spec.init_params(np.random.default_rng(0), "float32").dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        spec.init_params(np.random.default_rng(0), "float16")


# ---------------------------------------------------------------- structure helpers
def test_z_signs() -> None:
    np.testing.assert_array_equal(z_signs(2), [[1, 1], [1, -1], [-1, 1], [-1, -1]])


@pytest.mark.parametrize(("q", "entangler"), [(2, "ring"), (3, "long_range"), (4, "long_range"), (4, "ring")])
def test_cnot_permutation_matches_pennylane(q: int, entangler: str) -> None:
    import pennylane as qp

    spec = make(q, 3, entangler=entangler)
    for layer, r in enumerate(spec.ranges()):

        def block(r: int = r) -> None:
            for control in range(q):
                qp.CNOT(wires=[control, (control + r) % q])

        matrix = np.real(qp.matrix(block, wire_order=range(q))())
        f = spec.cnot_permutation(layer)
        expected = np.zeros((2**q, 2**q))
        expected[f, np.arange(2**q)] = 1.0  # CNOTs |i> = |f[i]>
        np.testing.assert_array_equal(matrix, expected)


# ---------------------------------------------------------------- PennyLane template
def reference_circuit(spec: CircuitSpec, x: np.ndarray, w: np.ndarray, p: float, r: float) -> list[object]:
    """The ansatz written out gate by gate from docs/architecture.md."""
    import pennylane as qp

    q = spec.n_qubits
    for layer in range(spec.n_layers):
        if layer == 0 or spec.reupload:
            for qubit in range(q):
                qp.RX(x[qubit], wires=qubit)
        for qubit in range(q):
            qp.RZ(w[layer, qubit, 0], wires=qubit)
            qp.RY(w[layer, qubit, 1], wires=qubit)
            qp.RZ(w[layer, qubit, 2], wires=qubit)
        if q > 1:
            rng = 1 if spec.entangler == "ring" else (layer % (q - 1)) + 1
            for qubit in range(q):
                qp.CNOT(wires=[qubit, (qubit + rng) % q])
        if p > 0:
            for qubit in range(q):
                qp.DepolarizingChannel(p, wires=qubit)
    if r > 0:
        for qubit in range(q):
            qp.BitFlip(r, wires=qubit)
    return [qp.expval(qp.PauliZ(qubit)) for qubit in range(q)]


@pytest.mark.parametrize(
    ("q", "layers", "reupload", "entangler", "noise"),
    [
        (3, 3, False, "long_range", (0.0, 0.0)),
        (4, 2, True, "ring", (0.0, 0.0)),
        (1, 2, True, "long_range", (0.0, 0.0)),
        (3, 2, True, "long_range", (0.1, 0.05)),
        (2, 2, False, "ring", (0.0, 0.2)),
    ],
)
def test_qfunc_is_the_documented_ansatz(
    q: int, layers: int, reupload: bool, entangler: str, noise: tuple[float, float]
) -> None:
    import pennylane as qp

    spec = make(q, layers, 2, reupload=reupload, entangler=entangler)
    rng = np.random.default_rng(q * 10 + layers)
    x = rng.uniform(0, np.pi, q)
    w = rng.uniform(0, 2 * np.pi, (layers, q, 3))
    p, r = noise
    dev = qp.device("default.mixed", wires=q)
    expected = qp.QNode(lambda: reference_circuit(spec, x, w, p, r), dev)()
    if p or r:
        got = qp.QNode(lambda: spec.noisy_qfunc(x, w, p, r), dev)()
    else:
        got = qp.QNode(lambda: spec.qfunc(x, w), qp.device("default.qubit", wires=q))()
    np.testing.assert_allclose(np.array(got, dtype=float), np.array(expected, dtype=float), atol=1e-12)


def test_qfunc_broadcasts_over_inputs() -> None:
    import pennylane as qp

    spec = make(3, 2, 2, reupload=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, np.pi, (4, 3))
    w = rng.uniform(0, 2 * np.pi, (2, 3, 3))
    qnode = qp.QNode(spec.qfunc, qp.device("default.qubit", wires=3))
    batched = np.array(qnode(x, w))  # [Q, B]
    single = np.stack([np.array(qnode(x[b], w)) for b in range(4)], 1)
    np.testing.assert_allclose(batched, single, atol=1e-12)


def test_weight_shape_validation() -> None:
    import pennylane as qp

    spec = make(3, 2, 2)
    with pytest.raises(ValueError, match=r"shape\(2, 3\)"):
        spec.check_weights(np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="n_layers, n_wires, 3"):
        spec.check_weights(torch.zeros(3, 3, 3))
    spec.check_weights(torch.zeros(5, 2, 3, 3))  # leading batch dimensions are allowed
    qnode = qp.QNode(spec.qfunc, qp.device("default.qubit", wires=3))
    with pytest.raises(ValueError, match="weights must have shape"):
        qnode(np.zeros(3), np.zeros((2, 3, 2)))
