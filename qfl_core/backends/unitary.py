"""The ``unitary`` engine: each client's whole circuit as one ``2^Q x 2^Q`` matrix, applied to all its samples.

Without re-uploading the ansatz after the embedding depends on the weights only, so for small registers it is
cheapest to build each client's unitary once per call and apply it to every sample in one batched product:

* The embedded input ``RX(x)|0..0>`` is ``(-i)^popcount(j) r_j(x)`` with real ``r`` (a product of
  ``cos(x_q/2)`` and ``sin(x_q/2)``); the phase is folded into the unitary, ``U' = M_L ... M_1 diag(phase)``
  with ``M_l = P_l K_l`` (the layer's Kronecker product of ``Rot`` gates and its CNOT permutation).
* The per-sample work is real arithmetic: ``out = r U'^T`` with ``U'^T`` viewed as a real ``[D, 2D]`` matrix
  gives the real and imaginary parts of every amplitude in one product, and ``<Z_q> = out^2 S`` is another.
* Backward: ``dL/dU'^T = r^T dout`` (one product), then the adjoint sweep of the statevector engine runs on
  the ``D`` columns of the partial products instead of the ``B`` samples (:mod:`.statevector`).

The work per call is ``O(L D^3 + B D^2)`` per client against ``O(L B D^2)`` gate by gate, so the engine is the
default only for ``D = 2^Q <= 32`` (``Q <= 5``); it is exact at every size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qflgym.qfl_core.backends.linalg import rowwise_matmul
from qflgym.qfl_core.backends.statevector import StatevectorSimulator
from qflgym.qfl_core.circuits import CircuitSpec


@dataclass
class UnitarySaved:
    """Intermediates of :meth:`UnitarySimulator.forward` for the backward pass."""

    shape: torch.Size
    angles: torch.Tensor
    cos: torch.Tensor
    rot: torch.Tensor
    bt_mats: torch.Tensor
    partial: list[torch.Tensor]
    amplitudes: torch.Tensor
    psi: torch.Tensor
    """``[C, B, 2D]`` real and imaginary parts of the final amplitudes (true basis), interleaved."""


class UnitarySimulator:
    """Exact noiseless simulation of a circuit without re-uploading through each client's unitary.

    Args:
        spec: The circuit (``reupload=False``).

    Raises:
        ValueError: If the circuit re-uploads its input (the unitary would depend on every sample).
    """

    def __init__(self, spec: CircuitSpec) -> None:
        if spec.reupload:
            raise ValueError("the unitary engine needs reupload=False (re-uploading makes the unitary per sample)")
        self.spec = spec
        self._dense = StatevectorSimulator(spec, 0)  # shares its tables: layer matrices, embedding, signs
        self._signs_t2: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def _phase(self, const: dict[str, torch.Tensor]) -> torch.Tensor:
        """Phase ``(-i)^popcount(j)`` of the angle-embedded input (folded into the unitary); 1 for amplitudes."""
        phase = const["embed_phase"]
        return torch.ones_like(phase) if self.spec.embedding == "amplitude" else phase

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The real amplitudes ``r(x) [C, B, D]`` of the embedded inputs (the angles' phase is in the unitary)."""
        if self.spec.embedding == "amplitude":  # the input is the (real) state itself
            return x.contiguous()
        n_clients, batch, q = x.shape
        const = self._dense.const(x.dtype, x.device)
        with torch.no_grad():
            cs = torch.cos(x.unsqueeze(-1) * 0.5 - const["half_pi"])  # [C, B, Q, 2]: cos(x/2), sin(x/2)
            index = self._dense.layout(batch, x.device)["embed"].expand(n_clients, -1)
            return cs.view(n_clients, -1).gather(1, index).view(n_clients, batch, 2**q, q).prod(-1)

    def forward(
        self, weights: torch.Tensor, x: torch.Tensor, save: bool = True, states: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, UnitarySaved]:
        """``z [C, B, Q]`` and the intermediates, without autograd.

        With ``save=False`` (no backward to come) consecutive rows with equal weights share one unitary, e.g. the
        rows of an evaluation set that all hold the global model; the intermediates are then those of the
        distinct rows (each row's bits are those it gets alone, so sharing changes no value). ``states`` is
        :meth:`embed` of ``x`` when the caller has it already.
        """
        n_clients = x.shape[0]
        inverse = None
        if not save and n_clients > 1:  # runs of equal rows (cheaper to find than torch.unique's sorted rows)
            flat = weights.reshape(n_clients, -1)
            starts = torch.cat((flat.new_ones(1, dtype=torch.bool), (flat[1:] != flat[:-1]).any(1)))
            if not bool(starts.all()):
                inverse = starts.cumsum(0) - 1
                weights = weights[starts]
        const = self._dense.const(weights.dtype, weights.device)
        n_layers, q = self.spec.n_layers, self.spec.n_qubits
        n_models, dim = weights.shape[0], 2**q
        with torch.no_grad():
            angles = rowwise_matmul(weights.reshape(n_models, -1, 3), const["rot_matrix"], const["rot_bias"])
            angles = angles.view(-1, 16)
            cos = torch.cos(angles)
            rot = torch.view_as_complex((cos[:, :8] * cos[:, 8:]).view(n_models, n_layers, q, 2, 2, 2))
            index = const["kron_dense"].expand(n_models, -1)
            bt_mats = rot.view(n_models, -1).gather(1, index).view(n_models, n_layers, q, dim, dim).prod(2)
            partial = [self._phase(const).unsqueeze(-1) * bt_mats[:, 0]]  # F_l^T = diag(phase) M_1^T ... M_l^T
            for layer in range(1, n_layers):
                partial.append(torch.bmm(partial[-1], bt_mats[:, layer]))
            unitary_t = torch.view_as_real(partial[-1]).view(n_models, dim, 2 * dim)
            if inverse is not None:
                unitary_t = unitary_t[inverse]
            amplitudes = self.embed(x) if states is None else states
            psi = torch.bmm(amplitudes, unitary_t)
            z = rowwise_matmul(psi * psi, const["signs2"])
        return z, UnitarySaved(weights.shape, angles, cos, rot, bt_mats, partial, amplitudes, psi)

    def backward(self, saved: UnitarySaved, grad_z: torch.Tensor) -> torch.Tensor:
        """Gradient of ``sum(grad_z * z)`` with respect to the weights (adjoint sweep over the unitary's columns)."""
        const = self._dense.const(saved.angles.dtype, saved.angles.device)
        n_clients, _, dim = saved.amplitudes.shape
        n_layers = self.spec.n_layers
        with torch.no_grad():
            key = (saved.psi.dtype, saved.psi.device)
            if key not in self._signs_t2:  # d<Z_q>/d psi_(i, re|im) = 2 psi_(i, re|im) S[i, q]
                self._signs_t2[key] = (2.0 * const["signs2"].mT).contiguous()
            grad_psi = rowwise_matmul(grad_z.to(saved.psi.dtype), self._signs_t2[key]) * saved.psi
            grad = torch.view_as_complex(torch.bmm(saved.amplitudes.mT, grad_psi).view(n_clients, dim, dim, 2))
            traces = []
            for layer in reversed(range(n_layers)):
                grad = torch.bmm(grad, saved.bt_mats[:, layer].mH)  # cotangent of the layer's input rows
                if layer:
                    traces.append(torch.bmm(saved.partial[layer - 1].mH, grad))
                else:
                    traces.append(self._phase(const).conj().unsqueeze(-1) * grad)
            stacked = torch.stack(traces[::-1], 1).view(n_clients, n_layers, dim * dim)
            trace = rowwise_matmul(stacked, const["ptrace_b"]).view(n_clients, n_layers, -1, 2, 2)
            grad_rot = saved.rot @ trace  # G_q Tr_{not q}(...)
            grad_cos = torch.view_as_real(grad_rot).view(-1, 1, 8) * saved.cos.view(-1, 2, 8).flip(1)
            grad_angles = (grad_cos.view(-1, 16) * torch.sin(saved.angles)).view(n_clients, -1, 16)
            return rowwise_matmul(grad_angles, const["rot_grad"]).view(saved.shape)

    def probabilities(self, psi: torch.Tensor) -> torch.Tensor:
        """Outcome probabilities ``[C, B, D]`` (true basis) from :attr:`UnitarySaved.psi`."""
        with torch.no_grad():
            square = psi * psi
            return square[..., 0::2] + square[..., 1::2]  # re^2 + im^2 (a sum over a pair axis is far slower)
