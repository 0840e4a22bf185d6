"""Exact mixed-state simulation of the noisy ansatz in the Pauli-transfer representation (real arithmetic, autograd).

A state is its Pauli vector ``r_P = Tr(P rho)`` (``4^Q`` real numbers); ``Rot`` layers are Kronecker products of
real 4x4 transfer matrices, a CNOT block is a signed permutation of Pauli strings, and depolarizing every qubit
scales each string by ``(1 - 4p/3)^weight``, exactly ``rho -> (1 - 4p/3) rho + (4p/3) I/2 (x) Tr_q rho`` per
qubit. Without re-uploading the measured ``Z_q`` are evolved backwards (Heisenberg picture), so the work scales
with ``Q`` observables rather than ``B`` samples. Cost grows as ``4^Q``: fast up to ~5 qubits, ~0.1 s per call
at 6, seconds at 8.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qflgym.qfl_core.backends.base import ClientNoise
from qflgym.qfl_core.backends.linalg import (
    COMPLEX,
    apply_kron,
    apply_kron_per_sample,
    basis_bits,
    kron_matrices,
    kron_vectors,
    rot_matrices,
    rowwise_matmul,
    to_device,
)
from qflgym.qfl_core.circuits import CircuitSpec


def _pauli_digits(n: int) -> np.ndarray:
    """``[4^n, n]`` Pauli digits (0 = I, 1 = X, 2 = Y, 3 = Z) of every Pauli string, qubit 0 most significant."""
    return (np.arange(4**n)[:, None] // 4 ** (n - 1 - np.arange(n))[None, :]) % 4


def pauli_cnot_table(n_qubits: int, cnot_range: int) -> tuple[np.ndarray, np.ndarray]:
    """Conjugation of every Pauli string by a CNOT block ``C`` (``CNOT(q, (q + range) % Q)`` for ``q = 0..Q-1``).

    Uses the Aaronson-Gottesman update rules. With ``C^dag P C = sign[P] * source[P]`` the Pauli vector of
    ``C rho C^dag`` is ``r'[P] = sign[P] * r[source[P]]``.

    Returns:
        ``source [4^Q]`` (string indices) and ``sign [4^Q]`` (``+-1``).
    """
    q = n_qubits
    digits = _pauli_digits(q)
    x = (digits == 1) | (digits == 2)
    z = (digits == 2) | (digits == 3)
    phase = np.zeros(4**q, dtype=bool)
    if q > 1:
        for control in reversed(range(q)):  # C^dag P C: conjugate by the last CNOT first
            target = (control + cnot_range) % q
            phase ^= x[:, control] & z[:, target] & ~(x[:, target] ^ z[:, control])
            x[:, target] ^= x[:, control]
            z[:, control] ^= z[:, target]
    new = np.where(x & z, 2, np.where(x, 1, np.where(z, 3, 0)))
    source = (new * 4 ** (q - 1 - np.arange(q))).sum(1)
    return source, 1.0 - 2.0 * phase


class PauliTransferSimulator:
    """The noisy path of the ``torch`` backend: exact density-matrix evolution as Pauli vectors.

    Args:
        spec: The circuit.
    """

    def __init__(self, spec: CircuitSpec) -> None:
        self.spec = spec
        self._consts: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._layouts: dict[tuple[Any, ...], Any] = {}

    def _const(self, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        """Constants of the Pauli-transfer simulation (see :meth:`run`)."""
        key = (dtype, device)
        if key not in self._consts:
            q = self.spec.n_qubits
            a = q // 2
            digits = _pauli_digits(q)  # [4^Q, Q]
            weight = (digits > 0).sum(1)
            zsel = np.zeros((4**q, q))
            for qubit in range(q):
                zsel[3 * 4 ** (q - 1 - qubit), qubit] = 1.0
            subsets = basis_bits(q)  # Z-strings Z_S, S as bits
            zstrings = (3 * subsets * 4 ** (q - 1 - np.arange(q))).sum(1)
            hadamard = (-1.0) ** (subsets @ subsets.T) / 2**q  # p(i) = sum_S r[Z_S] (-1)^{S.i} / 2^Q
            observables = np.zeros((4**q, 2**q))  # one-hot Z-strings, for the Heisenberg picture
            observables[zstrings, np.arange(2**q)] = 1.0
            observables = observables.reshape(4**a, 4 ** (q - a), 2**q).transpose(0, 2, 1)
            singles = 2 ** (q - 1 - np.arange(q))  # the subsets {q}
            sigma = np.array([[[1, 0], [0, 1]], [[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]])
            # T_ij = Tr(s_i R s_j R^dag) / 2 = sum over (b, c, a, d) of R[b, c] conj(R[a, d]) s_i[a, b] s_j[c, d] / 2
            transfer_map = 0.5 * np.einsum("iab,jcd->bcadij", sigma, sigma).reshape(16, 16)
            tables = [pauli_cnot_table(q, r) for r in self.spec.ranges()]
            self._consts[key] = {
                "transfer_map": torch.as_tensor(transfer_map, dtype=COMPLEX[dtype]),
                "weight": torch.as_tensor(weight.reshape(4**a, 1, 4 ** (q - a)), dtype=dtype),
                "zsel": torch.as_tensor(zsel.reshape(4**a, 4 ** (q - a), q), dtype=dtype),
                "zstrings": torch.as_tensor(zstrings),
                "hadamard": torch.as_tensor(hadamard, dtype=dtype),
                "obs_all": torch.as_tensor(np.ascontiguousarray(observables), dtype=dtype),
                "obs_z": torch.as_tensor(np.ascontiguousarray(observables[:, singles]), dtype=dtype),
                "singles": torch.as_tensor(singles),
                "signs": [torch.as_tensor(sign.reshape(4**a, 1, 4 ** (q - a)), dtype=dtype) for _, sign in tables],
            }
            self._consts[key] = to_device(self._consts[key], device)
        return self._consts[key]

    def _layout(self, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Gather indices (and inverses) of the CNOT blocks on the Pauli layout ``[C, 4^a, B, 4^(Q-a)]``."""
        key = (batch, device)
        if key not in self._layouts:
            if len(self._layouts) >= 64:
                self._layouts.clear()
            q = self.spec.n_qubits
            cols = 4 ** (q - q // 2)
            b = np.arange(batch)[None, :, None]
            index = []
            for source in (pauli_cnot_table(q, r)[0] for r in self.spec.ranges()):
                src = source.reshape(-1, cols)
                flat = (src // cols)[:, None, :] * batch * cols + b * cols + (src % cols)[:, None, :]
                index.append((torch.as_tensor(flat.reshape(1, -1)), torch.as_tensor(np.argsort(flat.ravel())[None])))
            self._layouts[key] = to_device(index, device)
        return self._layouts[key]

    def run(
        self, weights: torch.Tensor, x: torch.Tensor, noise: ClientNoise, need_probs: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Exact mixed-state simulation in the Pauli-transfer representation (real arithmetic, autograd).

        A state is its Pauli vector ``r_P = Tr(P rho)`` over the ``4^Q`` Pauli strings, stored as
        ``[C, 4^a, N, 4^(Q-a)]`` like the statevector split layout. ``Rot`` layers act as Kronecker products of
        real 4x4 transfer matrices ``T_ij = Tr(s_i R s_j R^dag) / 2`` (two batched products); a CNOT block is a
        signed permutation of Pauli strings; depolarizing scales every string by ``(1 - 4p/3)^weight``.
        Without re-uploading the ``Q`` measured ``Z_q`` are evolved backwards (Heisenberg picture) and
        contracted with the embedded product state, so the work scales with ``Q`` rather than the batch.

        Returns:
            ``z [C, B, Q]`` (before readout noise) and, if asked, true-basis probabilities ``[C, B, 2^Q]``.
        """
        spec = self.spec
        q, a = spec.n_qubits, spec.n_qubits // 2
        n_clients, batch = x.shape[0], x.shape[1]
        const = self._const(weights.dtype, weights.device)
        rot = rot_matrices(weights)  # [C, L, Q, 2, 2]
        flat = rot.reshape(-1, 4)
        outer = (flat.unsqueeze(-1) * flat.conj().unsqueeze(-2)).view(-1, 16)  # R[b, c] conj(R[a, d])
        transfer = rowwise_matmul(outer.view(n_clients, -1, 16), const["transfer_map"]).real
        transfer = transfer.view(*rot.shape[:3], 4, 4)  # [C, L, Q, 4, 4]
        mats = (kron_matrices(transfer[:, :, :a]) if a else None, kron_matrices(transfer[:, :, a:].transpose(-1, -2)))
        sin, cos = torch.sin(x), torch.cos(x)
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        bloch = torch.stack((one, zero, -sin, cos), -1)  # Pauli vector of RX(x)|0>: [C, B, Q, 4]
        state = kron_vectors(bloch[:, :, :a]).transpose(1, 2).unsqueeze(-1) * kron_vectors(bloch[:, :, a:]).unsqueeze(1)
        state = state.contiguous()  # the embedded product state, [C, 4^a, B, 4^(Q-a)]
        lam = torch.tensor([4.0 * p / 3.0 for p in noise.depolarizing], dtype=weights.dtype, device=weights.device)
        scale = (1.0 - lam).view(-1, 1, 1, 1) ** const["weight"]
        if spec.reupload:  # transfer matrix of RX(x): Y -> cos Y + sin Z, Z -> cos Z - sin Y
            rx = torch.stack(
                (one, zero, zero, zero, zero, one, zero, zero, zero, zero, cos, -sin, zero, zero, sin, cos), -1
            )
            rx = rx.view(n_clients, batch, q, 4, 4)
            emb = (kron_matrices(rx[:, :, :a]) if a else None, kron_matrices(rx[:, :, a:].transpose(-1, -2)))
            final = self._forward(state, mats, emb, scale)
            z = rowwise_matmul(final.transpose(1, 2).reshape(n_clients, batch, -1), const["zsel"].view(-1, q))
            probs = self._probs(final) if need_probs else None
            return z, probs
        z = self._backward(const["obs_z"], mats, scale, state)
        probs = None
        if need_probs:  # no gradient needed: the cheaper picture for 2^Q observables vs B samples
            with torch.no_grad():
                detached = (None if mats[0] is None else mats[0].detach(), mats[1].detach())
                if 2**q <= batch:
                    probs = self._backward(const["obs_all"], detached, scale, state) @ const["hadamard"]
                else:
                    probs = self._probs(self._forward(state, detached, None, scale))
        return z, probs

    def _forward(
        self,
        state: torch.Tensor,
        mats: tuple[torch.Tensor | None, torch.Tensor],
        emb: tuple[torch.Tensor | None, torch.Tensor] | None,
        scale: torch.Tensor,
    ) -> torch.Tensor:
        """Schrodinger picture: evolve Pauli vectors ``[C, 4^a, N, 4^(Q-a)]`` through all layers."""
        const = self._const(state.dtype, state.device)
        n_clients, rows, n, cols = state.shape
        layout = self._layout(n, state.device)
        for layer in range(self.spec.n_layers):
            if layer and emb is not None:
                state = apply_kron_per_sample(state, *emb)
            state = apply_kron(state, None if mats[0] is None else mats[0][:, layer], mats[1][:, layer])
            if self.spec.n_qubits > 1:
                index = layout[layer][0].expand(n_clients, -1)
                state = state.view(n_clients, -1).gather(1, index).view(n_clients, rows, n, cols)
                state = state * const["signs"][layer]
            state = state * scale
        return state

    def _backward(
        self,
        observables: torch.Tensor,
        mats: tuple[torch.Tensor | None, torch.Tensor],
        scale: torch.Tensor,
        state: torch.Tensor,
    ) -> torch.Tensor:
        """Heisenberg picture: expectations ``[C, B, N]`` of ``observables [4^a, N, 4^(Q-a)]``.

        The observables are evolved backwards through all layers (transposed transfer maps) and contracted with
        the initial ``state``.
        """
        const = self._const(state.dtype, state.device)
        n_clients, rows, _, cols = state.shape
        n = observables.shape[1]
        layout = self._layout(n, state.device)
        obs = observables.expand(n_clients, -1, -1, -1).contiguous()
        for layer in reversed(range(self.spec.n_layers)):
            obs = obs * scale
            if self.spec.n_qubits > 1:
                index = layout[layer][1].expand(n_clients, -1)
                obs = (obs * const["signs"][layer]).view(n_clients, -1).gather(1, index).view(n_clients, rows, n, cols)
            obs = apply_kron(obs, None if mats[0] is None else mats[0][:, layer].mT, mats[1][:, layer].mT)
        n_clients, rows, n, cols = obs.shape
        flat_obs = obs.transpose(1, 2).reshape(n_clients, n, rows * cols)
        flat_state = state.permute(0, 1, 3, 2).reshape(n_clients, rows * cols, -1)
        return torch.bmm(flat_obs, flat_state).transpose(1, 2)

    def _probs(self, state: torch.Tensor) -> torch.Tensor:
        """True-basis outcome probabilities ``[C, N, 2^Q]`` of Pauli vectors ``[C, 4^a, N, 4^(Q-a)]``."""
        const = self._const(state.dtype, state.device)
        with torch.no_grad():
            flat = state.detach().transpose(1, 2).reshape(state.shape[0], state.shape[2], -1)
            return flat.index_select(-1, const["zstrings"]) @ const["hadamard"]
