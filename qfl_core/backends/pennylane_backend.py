"""The ``pennylane`` backend: the ansatz on any PennyLane device, one client at a time.

This is the reference implementation (it runs :meth:`CircuitSpec.qfunc` / :meth:`CircuitSpec.noisy_qfunc`
literally) and the baseline of "how QFL code usually trains". PennyLane is imported on first use, so
registering this backend costs nothing.

* Device: ``config.device`` (default ``default.qubit``) for noiseless clients; ``default.mixed`` for clients
  with depolarizing or readout noise.
* Differentiation: ``backprop`` on ``default.qubit`` / ``default.mixed``, PennyLane's ``best`` elsewhere.
* Batches: with ``config.broadcast`` and every client exact and noiseless, ONE QNode call evaluates all ``C x B``
  samples with per-sample weights (parameter broadcasting, the fastest way PennyLane runs this workload);
  otherwise broadcasting over the ``B`` samples of one client at a time. ``broadcast=False`` makes one QNode
  call per sample (the per-sample loop of typical QFL code).
* Shots: a fresh device with ``seed=`` drawn from the passed ``torch.Generator`` (PennyLane devices otherwise
  sample from NumPy's global RNG) and a QNode with ``shots=S``. As in the ``torch`` backend the returned values
  are the shot estimates and, when gradients are needed, the gradient is that of the exact expectation
  (straight-through: an extra analytic evaluation supplies it).
"""

from __future__ import annotations

from typing import Any

import torch

from qflgym.qfl_core.backends.base import Backend, ClientNoise
from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.config import BackendConfig

_BACKPROP_DEVICES = frozenset({"default.qubit", "default.mixed"})


class PennyLaneBackend(Backend):
    """Evaluate the ansatz with PennyLane QNodes (see the module docstring for devices, shots and gradients).

    Args:
        spec: The circuit.
        config: ``device`` (PennyLane device name), ``broadcast`` and ``dtype``.
    """

    name = "pennylane"

    def __init__(self, spec: CircuitSpec, config: BackendConfig) -> None:
        super().__init__(spec, config)
        self._exact_qnodes: dict[tuple[str, bool], Any] = {}

    # ------------------------------------------------------------------ QNodes
    def _qfunc(self, noisy: bool) -> Any:
        return self.spec.noisy_qfunc if noisy else self._noiseless_qfunc

    def _noiseless_qfunc(self, inputs: Any, weights: Any, depolarizing: float, readout_error: float) -> Any:
        return self.spec.qfunc(inputs, weights)

    @staticmethod
    def _diff_method(device_name: str) -> str:
        return "backprop" if device_name in _BACKPROP_DEVICES else "best"

    def _exact_qnode(self, device_name: str, noisy: bool) -> Any:
        key = (device_name, noisy)
        if key not in self._exact_qnodes:
            import pennylane as qp

            device = qp.device(device_name, wires=self.spec.n_qubits)
            self._exact_qnodes[key] = qp.QNode(
                self._qfunc(noisy), device, interface="torch", diff_method=self._diff_method(device_name)
            )
        return self._exact_qnodes[key]

    def _shots_qnode(self, device_name: str, noisy: bool, shots: int, seed: int) -> Any:
        import pennylane as qp

        # A new device per call: its seed comes from the caller's generator, so runs are reproducible
        # (devices are cheap to create, ~50 us).
        device = qp.device(device_name, wires=self.spec.n_qubits, seed=seed)
        return qp.QNode(self._qfunc(noisy), device, interface="torch", diff_method=None, shots=shots)

    # ------------------------------------------------------------------ evaluation
    def _run(self, qnode: Any, x: torch.Tensor, weights: torch.Tensor, p: float = 0.0, r: float = 0.0) -> torch.Tensor:
        """Evaluate one client's ``[B, Q]`` samples; returns ``[B, Q]``."""
        if self.config.broadcast:
            out = qnode(x, weights, p, r)
            return torch.stack([torch.as_tensor(o) for o in out], -1).reshape(x.shape[0], -1)
        rows = [torch.stack([torch.as_tensor(o) for o in qnode(x_b, weights, p, r)]) for x_b in x]
        return torch.stack(rows)

    def _broadcast_all(self, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """All clients' samples in one broadcast call, each sample with its client's weights: ``[C, B, Q]``."""
        n_clients, batch = x.shape[:2]
        per_sample = weights[:, None].expand(n_clients, batch, *weights.shape[1:]).reshape(-1, *weights.shape[1:])
        z = self._run(
            self._exact_qnode(self.config.device, False), x.reshape(n_clients * batch, -1).to(weights.dtype), per_sample
        )
        return z.reshape(n_clients, batch, -1).to(weights.dtype)

    def expvals(
        self,
        weights: torch.Tensor,
        x: torch.Tensor,
        noise: ClientNoise,
        generator: torch.Generator,
        states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pauli-Z expectations ``[C, B, Q]`` (see :meth:`Backend.expvals`); clients are evaluated in turn.

        ``states`` is never passed (this backend prepares no inputs: :meth:`Backend.embed_inputs` is ``None``).
        """
        self.check_inputs(weights, x, noise)
        if weights.shape[0] == 0:
            return weights.new_zeros(0, x.shape[1], self.spec.n_qubits)
        if self.config.broadcast and noise.is_exact:
            return self._broadcast_all(weights, x)
        needs_grad = torch.is_grad_enabled() and weights.requires_grad
        out = []
        for c in range(weights.shape[0]):
            shots, p, r = noise.shots[c], noise.depolarizing[c], noise.readout_error[c]
            noisy = p > 0 or r > 0
            device_name = "default.mixed" if noisy else self.config.device
            w_c, x_c = weights[c], x[c].to(weights.dtype)
            if shots is None:
                z = self._run(self._exact_qnode(device_name, noisy), x_c, w_c, p, r)
            else:
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
                with torch.no_grad():
                    sampled = self._run(self._shots_qnode(device_name, noisy, shots, seed), x_c, w_c, p, r)
                z = sampled.to(weights.dtype)
                if needs_grad:
                    exact = self._run(self._exact_qnode(device_name, noisy), x_c, w_c, p, r)
                    z = z + (exact - exact.detach())
            out.append(z.to(weights.dtype))
        return torch.stack(out)
