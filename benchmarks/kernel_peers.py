"""The per-round kernel workload and its implementations in qflgym and in peer simulators.

The workload is the default preset's training step: ``C = 8`` clients x ``B = 32`` samples, 2 layers of the
qflgym ansatz (``RX`` embedding, ``Rot`` + long-range CNOTs), a linear readout to 4 classes and the mean
cross-entropy per client, forward and backward (the gradient of the summed loss with respect to every client's
parameters), in float64. Each implementation is a ``step(params [C, P]) -> (loss [C], grad [C, P])`` callable
over the same data; :func:`check` confirms it agrees with qflgym before anything is timed.

Peers (optional, ``pip install "qflgym[bench]"``), written the way a performance-minded user would:

* ``pennylane-jax``: PennyLane ``default.qubit`` with ``interface="jax"``, backprop, all ``C x B`` circuits in
  one parameter-broadcast call (per-sample weights), the loss in ``jax.numpy``, ``jax.jit(jax.value_and_grad)``;
* ``tensorcircuit-jax``: tensorcircuit-ng on JAX, one circuit per sample, ``vmap`` over samples and clients,
  ``jax.jit(jax.value_and_grad)``;
* ``pennylane-torch``: PennyLane ``default.qubit`` with the torch interface (qflgym's ``pennylane`` backend).

JAX uses more than one core whatever its flags: pin the process (``taskset -c 0``) for single-thread figures.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from qflgym.qfl_core.backends import ClientNoise, make_backend
from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.clients import masked_cross_entropy
from qflgym.qfl_core.config import BackendConfig

Step = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Workload:
    """One kernel call's data: ``params [C, P]``, ``x [C, B, Q]``, ``y [C, B]`` (seeded)."""

    n_qubits: int
    clients: int = 8
    batch: int = 32
    layers: int = 2
    classes: int = 4
    seed: int = 0

    @property
    def spec(self) -> CircuitSpec:
        """The circuit."""
        return CircuitSpec(self.n_qubits, self.layers, n_classes=self.classes)

    def data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(params, x, y)`` as NumPy arrays."""
        rng = np.random.default_rng(self.seed)
        params = rng.normal(0.0, 0.5, (self.clients, self.spec.n_params))
        x = rng.uniform(0.0, np.pi, (self.clients, self.batch, self.n_qubits))
        y = rng.integers(0, self.classes, (self.clients, self.batch))
        return params, x, y


def qflgym_step(work: Workload, dtype: str = "float64", fused: bool = True) -> Step:
    """Qflgym's torch backend: the fused loss-and-gradient kernel, or expvals + readout + autograd."""
    spec = work.spec
    backend = make_backend(spec, BackendConfig(name="torch", dtype=dtype))
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    _, x_np, y_np = work.data()
    x, y = torch.as_tensor(x_np, dtype=tdtype), torch.as_tensor(y_np)
    mask = torch.ones(work.clients, work.batch, dtype=tdtype)
    noise = ClientNoise.exact(work.clients)

    def autograd_step(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = torch.as_tensor(params, dtype=tdtype).requires_grad_(True)
        weights, readout = spec.split(p)
        loss = masked_cross_entropy(spec.logits(backend.expvals(weights, x, noise, None), readout), y, mask)
        (grad,) = torch.autograd.grad(loss.sum(), p)
        return loss.detach().numpy(), grad.numpy()

    def fused_step(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loss, grad = backend.loss_and_grad(torch.as_tensor(params, dtype=tdtype), x, y, mask, noise, None)
        return loss.numpy(), grad.numpy()

    return fused_step if fused else autograd_step


def pennylane_torch_step(work: Workload) -> Step:
    """PennyLane ``default.qubit`` + torch (qflgym's ``pennylane`` backend, broadcast)."""
    spec = work.spec
    backend = make_backend(spec, BackendConfig(name="pennylane", device="default.qubit", broadcast=True))
    _, x_np, y_np = work.data()
    x, y = torch.as_tensor(x_np), torch.as_tensor(y_np)
    mask = torch.ones(work.clients, work.batch, dtype=torch.float64)
    noise = ClientNoise.exact(work.clients)

    def step(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = torch.as_tensor(params).requires_grad_(True)
        weights, readout = spec.split(p)
        loss = masked_cross_entropy(spec.logits(backend.expvals(weights, x, noise, None), readout), y, mask)
        (grad,) = torch.autograd.grad(loss.sum(), p)
        return loss.detach().numpy(), grad.numpy()

    return step


def _jax_loss(work: Workload, expvals: Callable) -> Step:
    """``jit(value_and_grad)`` of the summed cross-entropy given ``expvals(weights [C,L,Q,3]) -> z [C,B,Q]``."""
    import jax
    import jax.numpy as jnp

    spec = work.spec
    q, k = work.n_qubits, work.classes
    _, _, y_np = work.data()
    y = jnp.asarray(y_np)

    def losses(params: jnp.ndarray) -> jnp.ndarray:
        weights = params[:, : spec.n_circuit_params].reshape(work.clients, *spec.weight_shape)
        w = params[:, spec.n_circuit_params : spec.n_circuit_params + q * k].reshape(work.clients, q, k)
        b = params[:, spec.n_circuit_params + q * k :]
        logits = jnp.einsum("cbq,cqk->cbk", expvals(weights), w) + b[:, None, :]
        logp = jax.nn.log_softmax(logits, -1)
        return -jnp.take_along_axis(logp, y[..., None], -1)[..., 0].mean(1)

    value_and_grad = jax.jit(jax.value_and_grad(lambda p: losses(p).sum()))
    per_client = jax.jit(losses)

    def step(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = jnp.asarray(params)
        _, grad = value_and_grad(p)
        return np.asarray(per_client(p)), np.asarray(grad.block_until_ready())

    return step


def pennylane_jax_step(work: Workload) -> Step:
    """PennyLane ``default.qubit`` + JAX: one broadcast QNode call, ``jit(value_and_grad)``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import pennylane as qp

    spec = work.spec
    _, x_np, _ = work.data()
    x = jnp.asarray(x_np.reshape(-1, work.n_qubits))
    device = qp.device("default.qubit", wires=work.n_qubits)
    qnode = qp.QNode(spec.qfunc, device, interface="jax", diff_method="backprop")

    def expvals(weights: jnp.ndarray) -> jnp.ndarray:
        per_sample = jnp.repeat(weights, work.batch, axis=0)  # [C * B, L, Q, 3]
        return jnp.stack(qnode(x, per_sample), -1).reshape(work.clients, work.batch, work.n_qubits)

    return _jax_loss(work, expvals)


def tensorcircuit_jax_step(work: Workload) -> Step:
    """tensorcircuit-ng + JAX: one circuit per sample, ``vmap`` over samples and clients, ``jit``."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import tensorcircuit as tc

    tc.set_backend("jax")
    tc.set_dtype("complex128")
    spec = work.spec
    q, ranges = work.n_qubits, spec.ranges()
    _, x_np, _ = work.data()
    x = jnp.asarray(x_np)

    def circuit(xs: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
        c = tc.Circuit(q)
        for wire in range(q):
            c.rx(wire, theta=xs[wire])
        for layer in range(work.layers):
            for wire in range(q):
                c.rz(wire, theta=weights[layer, wire, 0])
                c.ry(wire, theta=weights[layer, wire, 1])
                c.rz(wire, theta=weights[layer, wire, 2])
            for wire in range(q):
                c.cnot(wire, (wire + ranges[layer]) % q)
        return jnp.stack([jnp.real(c.expectation_ps(z=[wire])) for wire in range(q)])

    per_client = jax.vmap(jax.vmap(circuit, in_axes=(0, None)), in_axes=(0, 0))
    return _jax_loss(work, lambda weights: per_client(x, weights))


#: Peer name -> (importable module it needs, step builder).
PEERS: dict[str, tuple[str, Callable[[Workload], Step]]] = {
    "pennylane-jax": ("jax", pennylane_jax_step),
    "tensorcircuit-jax": ("tensorcircuit", tensorcircuit_jax_step),
    "pennylane-torch": ("pennylane", pennylane_torch_step),
}


def available_peers() -> list[str]:
    """The peers whose packages are installed."""
    return [name for name, (module, _) in PEERS.items() if importlib.util.find_spec(module) is not None]


def peak_rss_gib() -> float:
    """This process's peak resident memory (``VmHWM``; unlike ``ru_maxrss`` it is not inherited over exec)."""
    with open("/proc/self/status") as status:
        kib = next(line for line in status if line.startswith("VmHWM")).split()[1]
    return int(kib) / 2**20


def check(step: Step, reference: Step, work: Workload, atol: float = 1e-9) -> float:
    """Largest absolute difference of ``step`` from ``reference`` on the workload (raises above ``atol``)."""
    params, _, _ = work.data()
    loss, grad = step(params)
    ref_loss, ref_grad = reference(params)
    error = float(max(np.abs(loss - ref_loss).max(), np.abs(grad - ref_grad).max()))
    if not error <= atol:
        raise AssertionError(f"implementation disagrees with qflgym by {error:.3g} (> {atol:g})")
    return error
