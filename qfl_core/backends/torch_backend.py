"""The ``torch`` backend: an exact, batched statevector / mixed-state simulator of the ansatz in PyTorch.

All ``C`` clients and their ``B`` samples are simulated in one call with a handful of tensor operations:

* noiseless circuits by :class:`~qflgym.qfl_core.backends.statevector.StatevectorSimulator` (``dense`` or
  ``split`` engine, hand-written adjoint backward; see :mod:`qflgym.qfl_core.backends.statevector`);
* any client with depolarizing noise ``p > 0`` by the exact Pauli-transfer simulation of
  :mod:`qflgym.qfl_core.backends.pauli` (ordinary autograd);
* readout bit flips ``r``: exact for expectations, ``<Z_q> -> (1 - 2r) <Z_q>``;
* finite shots by :mod:`qflgym.qfl_core.backends.sampling` (exact multinomial counts, straight-through gradient).

Gradients flow to the weights only: features ``x`` are data, and passing features that require a gradient
raises a ``ValueError`` rather than silently returning no gradient for them.
"""

from __future__ import annotations

import torch

from qflgym.qfl_core.backends.base import Backend, ClientNoise
from qflgym.qfl_core.backends.linalg import COMPLEX
from qflgym.qfl_core.backends.pauli import PauliTransferSimulator
from qflgym.qfl_core.backends.sampling import shot_estimates
from qflgym.qfl_core.backends.statevector import NoiselessCircuit, StatevectorSimulator
from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.config import BackendConfig

#: The noiseless engines: qubits in the first register part as a function of the qubit count.
ENGINES = {"dense": lambda n_qubits: 0, "split": lambda n_qubits: n_qubits // 2}


class TorchBackend(Backend):
    """Batched exact simulator of the ansatz (see the module docstring for the method).

    Args:
        spec: The circuit.
        config: Only ``dtype`` is used (``float64`` simulates in ``complex128``, ``float32`` in ``complex64``).

    Attributes:
        engine: ``"dense"`` (one ``2^Q x 2^Q`` matrix per layer) or ``"split"`` (two Kronecker factors), chosen
            from the qubit count; both are exact and may be overridden after construction.
        pauli: The noisy-path simulator (:class:`~qflgym.qfl_core.backends.pauli.PauliTransferSimulator`).
    """

    name = "torch"

    #: Largest ``Q`` simulated with one dense ``2^Q x 2^Q`` matrix per layer (above: two Kronecker factors).
    dense_max_qubits: int = 5
    #: The same with re-uploading, whose per-sample embedding layer is cheaper in two factors.
    dense_max_qubits_reupload: int = 3

    def __init__(self, spec: CircuitSpec, config: BackendConfig) -> None:
        super().__init__(spec, config)
        limit = self.dense_max_qubits_reupload if spec.reupload else self.dense_max_qubits
        self.engine = "dense" if spec.n_qubits <= limit else "split"
        self._statevector: dict[int, StatevectorSimulator] = {}
        self.pauli = PauliTransferSimulator(spec)

    @property
    def statevector(self) -> StatevectorSimulator:
        """The noiseless simulator of the current :attr:`engine` (built on first use)."""
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {self.engine!r}")
        split_at = ENGINES[self.engine](self.spec.n_qubits)
        if split_at not in self._statevector:
            self._statevector[split_at] = StatevectorSimulator(self.spec, split_at)
        return self._statevector[split_at]

    def expvals(
        self, weights: torch.Tensor, x: torch.Tensor, noise: ClientNoise, generator: torch.Generator
    ) -> torch.Tensor:
        """Pauli-Z expectations ``[C, B, Q]`` (see :meth:`Backend.expvals` and the module docstring).

        Raises:
            ValueError: On mismatched shapes, or if ``x`` requires a gradient (only weights are differentiated).
            TypeError: Unless the weights are float64 or float32.
        """
        self.check_inputs(weights, x, noise)
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "x requires a gradient, but the torch backend differentiates only the weights: pass x.detach(), "
                "or use the 'pennylane' backend for gradients with respect to the inputs"
            )
        n_clients, batch = x.shape[0], x.shape[1]
        dtype = weights.dtype
        if dtype not in COMPLEX:
            raise TypeError(f"weights must be float64 or float32, got {dtype}")
        if n_clients == 0 or batch == 0:
            return weights.new_zeros(n_clients, batch, self.spec.n_qubits) + 0.0 * weights.sum()
        x = x.to(dtype)
        probs = None
        if any(noise.depolarizing):
            z, probs = self.pauli.run(weights, x, noise, need_probs=noise.has_shots)
        else:
            simulator = self.statevector
            if torch.is_grad_enabled() and weights.requires_grad:
                z, psi = NoiselessCircuit.apply(weights, simulator, x)
            else:
                z, saved = simulator.forward(weights.detach(), x, save=False)
                psi = saved.psi
            if noise.has_shots:
                probs = simulator.probabilities(psi)
        if any(noise.readout_error):
            scale = torch.tensor([1.0 - 2.0 * r for r in noise.readout_error], dtype=dtype, device=z.device)
            z = z * scale.view(-1, 1, 1)
        if probs is not None and noise.has_shots:
            z = shot_estimates(z, probs, noise, generator)
        return z
