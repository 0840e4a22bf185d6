"""The noiseless statevector engines of the ``torch`` backend, with a hand-written adjoint backward.

At these sizes a federated round costs Python and dispatch overhead per operation, not arithmetic, so the
engines minimize operations; the forward pass runs without autograd and :class:`NoiselessCircuit` supplies the
adjoint backward, so no autograd graph is built for the simulation.

Noiseless statevector (``Q`` qubits, ``D = 2^Q``; wire 0 is the most significant bit, as in PennyLane):

* All ``C * L * Q`` ``Rot`` gates come from one affine map and one ``cos`` of the weights (``sin(a) =
  cos(a - pi/2)``): every real and imaginary part of ``Rot`` is a product of two cosines.
* States are stored as ``[C, R, B, K]``: the register is split into a first part (``R = 2^a`` amplitudes) and a
  second part (``K = 2^(Q-a)``), so a layer of single-qubit gates, the Kronecker product ``A (x) B``, costs two
  batched matrix products ``A psi`` and ``psi B^T`` without copies. Kronecker products of gates are one gather
  and one product over a precomputed index.
* ``a = 0`` (the ``dense`` engine): one ``D x D`` matrix per client and layer with that layer's CNOT
  permutation folded into its columns; the embedded input ``RX(x)|0..0>`` is a product state. ``a = Q // 2``
  (``split``): layer 0 keeps the state a product (``Rot RX(x)|0>`` per qubit); the CNOT blocks are gathers,
  the last one folded into the Pauli-Z sign table.
* Re-uploading applies the per-sample ``RX`` layer (a Kronecker product too) before every later layer.
* ``<Z_q> = sum_i |psi_i|^2 S[i, q]`` is one real matrix product.
* Backward (adjoint method, one sweep): the cotangent ``g`` is pulled back through each layer with the adjoint
  gates, and the gradient of each single-qubit gate ``G_q`` is ``G_q Tr_{not q}(sum_b g_b phi_b^H)`` (``phi`` the
  layer's input; valid because the gates are unitary): one batched product and one fixed linear map per
  register part and layer. Layer 0 of the split engine uses leave-one-out products of the product state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from qflgym.qfl_core.backends.linalg import (
    COMPLEX,
    apply_kron,
    apply_kron_per_sample,
    basis_bits,
    kron_index,
    kron_matrices,
    kron_vectors,
    kron_vectors_grad,
    partial_trace_matrix,
    rot_affine,
    rowwise_matmul,
    to_device,
    xor_phase,
)
from qflgym.qfl_core.circuits import CircuitSpec, z_signs


@dataclass
class _Saved:
    """Intermediates of a noiseless forward pass that the adjoint backward needs."""

    shape: torch.Size
    angles: torch.Tensor
    cos: torch.Tensor
    rot: torch.Tensor
    a_mats: torch.Tensor | None
    bt_mats: torch.Tensor
    emb: tuple[torch.Tensor | None, torch.Tensor] | None
    product: tuple[torch.Tensor, ...] | None
    states: list[torch.Tensor]
    psi: torch.Tensor


class NoiselessCircuit(torch.autograd.Function):
    """``weights -> (z, psi)`` with the adjoint backward of :meth:`StatevectorSimulator.backward`."""

    @staticmethod
    def forward(ctx: Any, weights: torch.Tensor, simulator: StatevectorSimulator, x: torch.Tensor) -> Any:
        """Simulate without autograd and keep the intermediates for :meth:`backward`."""
        z, saved = simulator.forward(weights, x, save=True)
        ctx.simulator, ctx.saved = simulator, saved
        ctx.mark_non_differentiable(saved.psi)
        return z, saved.psi

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_z: torch.Tensor, _grad_psi: torch.Tensor) -> Any:
        """The adjoint-method gradient with respect to the weights."""
        return ctx.simulator.backward(ctx.saved, grad_z), None, None


class StatevectorSimulator:
    """Exact noiseless statevector simulation of ``spec`` with the register split after ``split_at`` qubits.

    Args:
        spec: The circuit.
        split_at: Qubits ``a`` in the first register part (``0``: one dense ``2^Q x 2^Q`` matrix per layer).
    """

    def __init__(self, spec: CircuitSpec, split_at: int) -> None:
        if not 0 <= split_at < max(spec.n_qubits, 1):
            raise ValueError(f"split_at must lie in [0, {spec.n_qubits - 1}], got {split_at}")
        self.spec = spec
        self.split_at = split_at
        self._consts: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._layouts: dict[tuple[Any, ...], Any] = {}
        self._perms = [spec.cnot_permutation(layer) for layer in range(spec.n_layers)]

    def const(self, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        """Constants of one dtype: ``Rot`` map, sign tables, Kronecker and partial-trace index maps."""
        key = (dtype, self.split_at, device)
        if key not in self._consts:
            q, a = self.spec.n_qubits, self.split_at
            cdtype = COMPLEX[dtype]
            matrix, bias = rot_affine()
            # dense: CNOT permutations folded into the layer matrices; split: the last one into the signs
            signs_last = z_signs(q) if a == 0 else z_signs(q, self._perms[-1])
            kron_a, kron_b = kron_index(a), kron_index(q - a, transpose=True) + 4 * a
            phase = (-1j) ** basis_bits(q).sum(1)
            self._consts[key] = {
                "rot_matrix": torch.as_tensor(matrix, dtype=dtype),
                "rot_bias": torch.as_tensor(bias, dtype=dtype),
                "rot_grad": torch.as_tensor(-matrix.T, dtype=dtype),
                "half_pi": torch.tensor([0.0, math.pi / 2], dtype=dtype),
                "ket_phase": torch.tensor([1.0, -1j], dtype=cdtype),
                "signs2": torch.as_tensor(np.repeat(signs_last, 2, axis=0), dtype=dtype),
                "signs_t2": torch.as_tensor(2.0 * signs_last.T, dtype=dtype),
                "finv_last": None if a == 0 else torch.as_tensor(np.argsort(self._perms[-1])),
                "kron_a": torch.as_tensor(kron_a),
                "kron_b": torch.as_tensor(kron_b),
                "kron_ab": torch.as_tensor(np.concatenate([kron_a, kron_b])),
                "kron_dense": self._kron_dense() if a == 0 else None,
                "embed_phase": torch.as_tensor(phase, dtype=cdtype),
                "xor_phase_b": torch.as_tensor(xor_phase(q - a), dtype=cdtype),
                "ptrace_a": torch.as_tensor(partial_trace_matrix(a), dtype=cdtype) if a else None,
                "ptrace_b": torch.as_tensor(partial_trace_matrix(q - a, transposed=True), dtype=cdtype),
            }
            self._consts[key] = to_device(self._consts[key], device)
        return self._consts[key]

    def _kron_dense(self) -> torch.Tensor:
        """Gather index of the dense layer matrices (CNOT permutation folded in): ``[1, L * Q * D * D]``.

        Its size grows as ``4^Q``, so only the dense engine (``Q <= 5`` by default) builds it.
        """
        q = self.spec.n_qubits
        index = [
            kron_index(q, transpose=True, col_source=np.argsort(f)) + 4 * q * layer
            for layer, f in enumerate(self._perms)
        ]
        return torch.as_tensor(np.concatenate(index)).view(1, -1)

    def layout(self, batch: int, device: torch.device) -> dict[str, Any]:
        """Index maps on the state layout ``[C, R, B, K]`` for batch size ``B`` (cached).

        Dense: the gather index of the embedded product state (and of the per-sample ``RX`` layer with
        re-uploading). Split: the CNOT permutations and their inverses.
        """
        a = self.split_at
        key = (batch, a, device)
        if key not in self._layouts:
            if len(self._layouts) >= 64:
                self._layouts.clear()
            q = self.spec.n_qubits
            rows, cols = 2**a, 2 ** (q - a)
            b = np.arange(batch)[None, :, None]
            layout: dict[str, Any] = {}
            if a == 0:
                embed = b[..., None] * 2 * q + 2 * np.arange(q) + basis_bits(q)[None, None]  # [1, B, D, Q]
                layout["embed"] = torch.as_tensor(embed.reshape(1, -1))
                if self.spec.reupload:
                    bits = basis_bits(q).T  # [Q, D]
                    flips = bits[:, :, None] ^ bits[:, None, :]  # [Q, D, D]
                    index = np.arange(batch)[:, None, None, None] * 2 * q + 2 * np.arange(q)[:, None, None]
                    layout["emb_b"] = torch.as_tensor((index + flips).reshape(1, -1))
            else:
                layout["perm"], layout["perm_inv"] = [], []
                for f in self._perms:
                    src = np.argsort(f).reshape(rows, cols)  # true index that entry (r', k') comes from
                    index = ((src // cols)[:, None, :] * batch * cols + b * cols + (src % cols)[:, None, :]).ravel()
                    layout["perm"].append(torch.as_tensor(index.reshape(1, -1)))
                    layout["perm_inv"].append(torch.as_tensor(np.argsort(index).reshape(1, -1)))
            self._layouts[key] = to_device(layout, device)
        return self._layouts[key]

    def forward(self, weights: torch.Tensor, x: torch.Tensor, save: bool) -> tuple[torch.Tensor, _Saved]:
        """Noiseless statevector simulation without autograd; returns ``z [C, B, Q]`` and the intermediates."""
        spec = self.spec
        const = self.const(weights.dtype, weights.device)
        n_clients, batch = x.shape[0], x.shape[1]
        n_layers, q, a = spec.n_layers, spec.n_qubits, self.split_at
        rows, cols = 2**a, 2 ** (q - a)
        layout = self.layout(batch, weights.device)
        with torch.no_grad():
            angles = rowwise_matmul(weights.reshape(n_clients, -1, 3), const["rot_matrix"], const["rot_bias"])
            angles = angles.view(-1, 16)
            cos = torch.cos(angles)
            rot = torch.view_as_complex((cos[:, :8] * cos[:, 8:]).view(n_clients, n_layers, q, 2, 2, 2))
            flat = rot.view(n_clients, n_layers, 4 * q)
            if a == 0:  # P_l K_l, transposed, with the permutation folded into the gather
                a_mats = None
                index = const["kron_dense"].expand(n_clients, -1)
                bt_mats = rot.view(n_clients, -1).gather(1, index).view(n_clients, n_layers, q, cols, cols).prod(2)
            elif 2 * a == q:
                index = const["kron_ab"].expand(n_clients, n_layers, -1)
                both = flat.gather(2, index).view(n_clients, n_layers, 2, a, rows, rows).prod(3)
                a_mats, bt_mats = both[:, :, 0], both[:, :, 1]
            else:
                index = const["kron_a"].expand(n_clients, n_layers, -1)
                a_mats = flat.gather(2, index).view(n_clients, n_layers, a, rows, rows).prod(2)
                index = const["kron_b"].expand(n_clients, n_layers, -1)
                bt_mats = flat.gather(2, index).view(n_clients, n_layers, q - a, cols, cols).prod(2)
            # RX(x)|0> per qubit is (cos(x/2), -i sin(x/2))
            cs = torch.cos(x.unsqueeze(-1) * 0.5 - const["half_pi"])  # [C, B, Q, 2]
            product = None
            if spec.embedding == "amplitude":  # the input is the state: [C, B, D] -> the layout [C, R, B, K]
                psi = x.view(n_clients, batch, rows, cols).transpose(1, 2).to(COMPLEX[x.dtype]).contiguous()
                first = 0
            elif a == 0:  # product state of real amplitudes times the phase (-i)^popcount; layer 0 by matrix
                index = layout["embed"].expand(n_clients, -1)
                psi = cs.view(n_clients, -1).gather(1, index).view(n_clients, rows, batch, cols, q)
                psi = psi.prod(-1) * const["embed_phase"]
                first = 0
            else:  # layer 0's gates keep the state a product: v_q = Rot(w_0q) RX(x_q)|0>
                ket = cs * const["ket_phase"]
                rot0 = rot[:, 0].unsqueeze(1)
                v = rot0[..., 0] * ket[..., :1] + rot0[..., 1] * ket[..., 1:]  # [C, B, Q, 2]
                va, vb = kron_vectors(v[:, :, :a]), kron_vectors(v[:, :, a:])
                psi = (va.transpose(1, 2).unsqueeze(-1) * vb.unsqueeze(1)).contiguous()
                product, first = (ket, v, va, vb), 1
            emb = None
            if spec.reupload:
                if a == 0:
                    index = layout["emb_b"].expand(n_clients, -1)
                    emb_b = cs.view(n_clients, -1).gather(1, index).view(n_clients, batch, q, cols, cols)
                    emb = (None, emb_b.prod(2) * const["xor_phase_b"])
                else:
                    ket = cs * const["ket_phase"]
                    rx = torch.stack((ket, ket.flip(-1)), -1)  # [[cos, -i sin], [-i sin, cos]]
                    emb = (kron_matrices(rx[:, :, :a]), kron_matrices(rx[:, :, a:]))
            states = []
            for layer in range(first, n_layers):
                if layer:
                    if a:
                        index = layout["perm"][layer - 1].expand(n_clients, -1)
                        psi = psi.view(n_clients, -1).gather(1, index).view(n_clients, rows, batch, cols)
                    if emb is not None:
                        psi = apply_kron_per_sample(psi, *emb)
                if save:
                    states.append(psi)
                psi = apply_kron(psi, None if a_mats is None else a_mats[:, layer], bt_mats[:, layer])
            parts = torch.view_as_real(psi)
            if a:
                parts = parts.transpose(1, 2)
            parts = parts.reshape(n_clients, batch, -1)
            z = rowwise_matmul(parts * parts, const["signs2"])
        return z, _Saved(weights.shape, angles, cos, rot, a_mats, bt_mats, emb, product, states, psi)

    def backward(self, saved: _Saved, grad_z: torch.Tensor) -> torch.Tensor:
        """Adjoint-method gradient of ``sum(grad_z * z)`` with respect to the weights."""
        spec = self.spec
        const = self.const(saved.angles.dtype, saved.angles.device)
        psi = saved.psi
        n_clients, rows, batch, cols = psi.shape
        a, q = self.split_at, spec.n_qubits
        layout = self.layout(batch, psi.device)
        # dL/dpsi in PyTorch's convention (dL/dRe + i dL/dIm) for L = sum grad_z * sum_i |psi_i|^2 S[i, q]
        h = rowwise_matmul(grad_z.to(saved.angles.dtype), const["signs_t2"])  # [C, B, D]
        if a:
            h = h.view(n_clients, batch, rows, cols).transpose(1, 2).contiguous()
        grad = h.reshape(n_clients, rows, batch, cols) * psi
        traces: list[torch.Tensor] = []
        first = spec.n_layers - len(saved.states)
        for layer in reversed(range(first, spec.n_layers)):
            phi = saved.states[layer - first]
            a_mat = None if saved.a_mats is None else saved.a_mats[:, layer]
            grad = apply_kron(grad, None if a_mat is None else a_mat.mH, saved.bt_mats[:, layer].mH)
            # sum_b g_b phi_b^H, reduced to each register part and then to each qubit
            yb = torch.bmm(phi.view(n_clients, -1, cols).mH, grad.view(n_clients, -1, cols))
            trace = rowwise_matmul(yb.view(n_clients, 1, -1), const["ptrace_b"]).view(n_clients, q - a, 2, 2)
            if a_mat is not None:
                xa = torch.bmm(grad.view(n_clients, rows, -1), phi.view(n_clients, rows, -1).mH)
                trace_a = rowwise_matmul(xa.view(n_clients, 1, -1), const["ptrace_a"]).view(n_clients, a, 2, 2)
                trace = torch.cat((trace_a, trace), 1)
            traces.append(trace)
            if layer:
                if saved.emb is not None:
                    emb_a, emb_b = saved.emb
                    grad = apply_kron_per_sample(grad, None if emb_a is None else emb_a.conj(), emb_b.conj())
                if a:
                    index = layout["perm_inv"][layer - 1].expand(n_clients, -1)
                    grad = grad.view(n_clients, -1).gather(1, index).view(n_clients, rows, batch, cols)
        grad_rot = saved.rot[:, first:] @ torch.stack(traces[::-1], 1) if traces else None  # G_q Tr_{not q}(..)
        if saved.product is not None:  # layer 0 on a product state: leave-one-out contractions
            ket, v, va, vb = saved.product
            grad_a = (grad * vb.conj().unsqueeze(1)).sum(-1).transpose(1, 2)  # [C, B, R]
            grad_b = (grad * va.conj().transpose(1, 2).unsqueeze(-1)).sum(1)  # [C, B, K]
            grad_v = torch.cat((kron_vectors_grad(grad_a, v[:, :, :a]), kron_vectors_grad(grad_b, v[:, :, a:])), 2)
            grad_rot0 = torch.einsum("cbqi,cbqk->cqik", grad_v, ket.conj()).unsqueeze(1)
            grad_rot = grad_rot0 if grad_rot is None else torch.cat((grad_rot0, grad_rot), 1)
        # parts = cos[:, :8] * cos[:, 8:]: each half's gradient is the other half times grad_parts
        grad_cos = torch.view_as_real(grad_rot).view(-1, 1, 8) * saved.cos.view(-1, 2, 8).flip(1)
        grad_angles = (grad_cos.view(-1, 16) * torch.sin(saved.angles)).view(n_clients, -1, 16)
        return rowwise_matmul(grad_angles, const["rot_grad"]).view(saved.shape)

    def probabilities(self, psi: torch.Tensor) -> torch.Tensor:
        """Outcome probabilities ``[C, B, D]`` in the true basis from a final state in the layout."""
        with torch.no_grad():
            n_clients, _, batch, _ = psi.shape
            probs = (psi.real.square() + psi.imag.square()).transpose(1, 2).reshape(n_clients, batch, -1)
            finv = self.const(probs.dtype, probs.device)["finv_last"]
            return probs if finv is None else probs.index_select(-1, finv)
