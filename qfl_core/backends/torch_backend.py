"""The ``torch`` backend: an exact, batched statevector / mixed-state simulator of the ansatz in PyTorch.

All ``C`` clients and their ``B`` samples are simulated in one call with a handful of tensor operations:

* noiseless circuits by one of three exact engines with hand-written adjoint backwards: ``unitary`` (each
  client's circuit as one matrix applied to all its samples; :mod:`qflgym.qfl_core.backends.unitary`), or
  ``dense`` / ``split`` gate by gate (:mod:`qflgym.qfl_core.backends.statevector`);
* any client with depolarizing noise ``p > 0`` by the exact Pauli-transfer simulation of
  :mod:`qflgym.qfl_core.backends.pauli` (ordinary autograd);
* readout bit flips ``r``: exact for expectations, ``<Z_q> -> (1 - 2r) <Z_q>``;
* finite shots by :mod:`qflgym.qfl_core.backends.sampling` (exact multinomial counts, straight-through gradient).

:meth:`TorchBackend.loss_and_grad` folds the readout and the cross-entropy gradient into the same hand-written
backward (:func:`~qflgym.qfl_core.losses.readout_cross_entropy`), so a training step without gate noise (finite
shots included) builds no autograd graph.

Gradients flow to the weights only: features ``x`` are data, and passing features that require a gradient
raises a ``ValueError`` rather than silently returning no gradient for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from qflgym.qfl_core.backends.base import Backend, ClientNoise, Generators
from qflgym.qfl_core.backends.linalg import COMPLEX
from qflgym.qfl_core.backends.pauli import PauliTransferSimulator
from qflgym.qfl_core.backends.sampling import shot_estimates
from qflgym.qfl_core.backends.statevector import NoiselessCircuit, StatevectorSimulator
from qflgym.qfl_core.backends.unitary import UnitarySimulator
from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.config import BackendConfig
from qflgym.qfl_core.losses import readout_cross_entropy

Engine = StatevectorSimulator | UnitarySimulator

#: The noiseless engines, each built as ``factory(spec)``.
ENGINES: dict[str, Callable[[CircuitSpec], Engine]] = {
    "unitary": UnitarySimulator,
    "dense": lambda spec: StatevectorSimulator(spec, 0),
    "split": lambda spec: StatevectorSimulator(spec, spec.n_qubits // 2),
}


class TorchBackend(Backend):
    """Batched exact simulator of the ansatz (see the module docstring for the method).

    Args:
        spec: The circuit.
        config: Only ``dtype`` is used (``float64`` simulates in ``complex128``, ``float32`` in ``complex64``).

    Attributes:
        engine: ``"unitary"`` (one ``2^Q x 2^Q`` matrix per client), ``"dense"`` (one per layer) or ``"split"``
            (two Kronecker factors per layer), chosen from the qubit count and re-uploading; all are exact and
            may be overridden after construction (``unitary`` needs ``reupload=False``).
        pauli: The noisy-path simulator (:class:`~qflgym.qfl_core.backends.pauli.PauliTransferSimulator`).
    """

    name = "torch"
    shares_generators = True

    #: Largest ``Q`` simulated through each client's unitary (without re-uploading).
    unitary_max_qubits: int = 5
    #: Largest ``Q`` simulated with one dense ``2^Q x 2^Q`` matrix per layer (above: two Kronecker factors).
    dense_max_qubits: int = 5
    #: The same with re-uploading, whose per-sample embedding layer is cheaper in two factors.
    dense_max_qubits_reupload: int = 3

    def __init__(self, spec: CircuitSpec, config: BackendConfig) -> None:
        super().__init__(spec, config)
        limit = self.dense_max_qubits_reupload if spec.reupload else self.dense_max_qubits
        self.engine = "dense" if spec.n_qubits <= limit else "split"
        if not spec.reupload and spec.n_qubits <= self.unitary_max_qubits:
            self.engine = "unitary"
        self._engines: dict[str, Engine] = {}
        self.pauli = PauliTransferSimulator(spec)

    @property
    def statevector(self) -> Engine:
        """The noiseless simulator of the current :attr:`engine` (built on first use)."""
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {self.engine!r}")
        if self.engine not in self._engines:
            self._engines[self.engine] = ENGINES[self.engine](self.spec)
        return self._engines[self.engine]

    def embed_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """The unitary engine's real amplitudes of the embedded ``x`` (see :meth:`Backend.embed_inputs`).

        ``None`` for the other engines, and for amplitude embedding (whose input is the state already).
        """
        if self.engine != "unitary" or self.spec.embedding == "amplitude":
            return None
        return self.statevector.embed(x)

    def _noiseless(
        self, weights: torch.Tensor, x: torch.Tensor, save: bool, states: torch.Tensor | None
    ) -> tuple[torch.Tensor, Any]:
        """The engine's forward; ``states`` (see :meth:`embed_inputs`) where the unitary engine can take them."""
        simulator = self.statevector
        if states is not None and isinstance(simulator, UnitarySimulator) and states.dtype == weights.dtype:
            return simulator.forward(weights, x, save=save, states=states)
        return simulator.forward(weights, x, save=save)

    def expvals(
        self,
        weights: torch.Tensor,
        x: torch.Tensor,
        noise: ClientNoise,
        generator: Generators,
        states: torch.Tensor | None = None,
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
            if self.spec.embedding == "amplitude":
                raise ValueError(
                    "the torch backend simulates depolarizing noise for angle embedding only; with "
                    "circuit.embedding='amplitude' use backend 'pennylane' (default.mixed) or no gate noise"
                )
            z, probs = self.pauli.run(weights, x, noise, need_probs=noise.has_shots)
        else:
            simulator = self.statevector
            if torch.is_grad_enabled() and weights.requires_grad:
                z, psi = NoiselessCircuit.apply(weights, simulator, x)
            else:
                z, saved = self._noiseless(weights.detach(), x, False, states)
                psi = saved.psi
            if noise.has_shots:
                probs = simulator.probabilities(psi)
        if any(noise.readout_error):
            scale = torch.tensor([1.0 - 2.0 * r for r in noise.readout_error], dtype=dtype, device=z.device)
            z = z * scale.view(-1, 1, 1)
        if probs is not None and noise.has_shots:
            z = shot_estimates(z, probs, noise, generator)
        return z

    def loss_and_grad(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        noise: ClientNoise,
        generator: Generators,
        states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss ``[C]`` and gradient ``[C, P]`` (see :meth:`Backend.loss_and_grad`) without autograd.

        Noiseless circuits (readout bit flips and finite shots included) take the engine's forward and
        hand-written backward with the closed-form readout and cross-entropy gradient: with shots the loss is
        that of the shot estimates and the gradient flows straight through to the exact expectations, as in
        :func:`~qflgym.qfl_core.backends.sampling.shot_estimates`. Depolarizing noise takes the autograd default.
        """
        if any(noise.depolarizing) or params.dtype not in COMPLEX:
            return super().loss_and_grad(params, x, y, mask, noise, generator, states)
        weights, readout = self.spec.split(params.detach())
        self.check_inputs(weights, x, noise)
        if x.shape[0] == 0 or x.shape[1] == 0:
            return params.new_zeros(x.shape[0]), torch.zeros_like(params)
        simulator = self.statevector
        z, saved = self._noiseless(weights, x.detach().to(params.dtype), True, states)
        scale = None
        if any(noise.readout_error):
            scale = torch.tensor([1.0 - 2.0 * r for r in noise.readout_error], dtype=z.dtype).view(-1, 1, 1)
            z = z * scale
        if noise.has_shots:  # the loss of the shot estimates, the gradient of the exact expectations
            z = shot_estimates(z, simulator.probabilities(saved.psi), noise, generator)
        loss, grad_z, grad_readout = readout_cross_entropy(self.spec, z, readout, y, mask)
        grad_weights = simulator.backward(saved, grad_z if scale is None else grad_z * scale)
        return loss, torch.cat((grad_weights.flatten(1), grad_readout), 1)
