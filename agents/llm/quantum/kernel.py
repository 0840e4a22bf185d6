"""A batched torch statevector for the adapters' circuits: RY/RZ layers, CNOT entanglers, amplitude inputs.

The circuits are defined with PennyLane in :mod:`.circuits` (to read, draw and export them); this module executes
the same circuits on a batch of states with ordinary autograd, which is what training needs. Conventions follow
PennyLane: wire 0 is the most significant bit of a basis-state index, ``RY(θ) = [[c, -s], [s, c]]`` with
``c, s = cos(θ/2), sin(θ/2)``, ``RZ(φ) = diag(e^{-iφ/2}, e^{iφ/2})``. A state is a ``(batch, 2**n)`` tensor.

A layer of single-qubit gates costs ``O(batch · n · 2**n)``; an entangler (a chain or ring of CNOTs) is a fixed
permutation of the basis states, applied as one gather. RY and CNOT are real, so circuits made of them (QPA's
generator) run in real arithmetic; RZ makes states complex (QAA).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch

__all__ = [
    "ENTANGLERS",
    "apply_layer",
    "basis_bits",
    "entangle",
    "entangler_permutation",
    "expval_z",
    "kron",
    "probabilities",
    "ry_matrices",
    "ry_rz_matrices",
    "zero_state",
]

#: Entangler names: ``chain`` is CNOT(0,1), CNOT(1,2), …, CNOT(n-2,n-1); ``ring`` adds CNOT(n-1,0).
ENTANGLERS = ("chain", "ring")


def zero_state(
    n_qubits: int, batch: int = 1, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """``|0…0⟩`` repeated ``batch`` times, shape ``(batch, 2**n_qubits)``."""
    state = torch.zeros(batch, 2**n_qubits, dtype=dtype, device=device)
    state[:, 0] = 1
    return state


def ry_matrices(theta: torch.Tensor) -> torch.Tensor:
    """RY matrices for angles of any shape: ``(*theta.shape, 2, 2)``, real."""
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def ry_rz_matrices(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``RZ(φ) · RY(θ)`` (RY applied first) for angles of one shape: ``(*shape, 2, 2)``, complex."""
    ry = ry_matrices(theta).to(torch.promote_types(theta.dtype, torch.complex64))
    phase = torch.exp(-0.5j * phi.to(ry.dtype))
    return ry * torch.stack([phase, phase.conj()], -1).unsqueeze(-1)


def kron(gates: torch.Tensor) -> torch.Tensor:
    """``gates[0] ⊗ gates[1] ⊗ …`` of ``(k, 2, 2)`` matrices: ``(2**k, 2**k)`` (wire 0 the most significant)."""
    out = gates[0]
    for gate in gates[1:]:
        out = torch.kron(out, gate)
    return out


def apply_layer(state: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Apply one single-qubit gate to every wire: ``gates[k]`` (a 2×2 matrix) acts on wire ``k``.

    The layer is the Kronecker product of its gates; it is applied as ``K_high · S · K_lowᵀ`` with ``S`` the state
    viewed as a ``2**h × 2**(n-h)`` matrix (``h = n // 2``): two small matrix products per state instead of ``n``
    strided passes.

    Args:
        state: ``(batch, 2**n)``.
        gates: ``(n, 2, 2)``.
    """
    batch, dim = state.shape
    n = gates.shape[0]
    dtype = torch.promote_types(state.dtype, gates.dtype)
    state, gates = state.to(dtype), gates.to(dtype)
    high = n // 2
    view = state.reshape(batch, 2**high, 2 ** (n - high))
    if high:
        view = torch.matmul(kron(gates[:high]), view)
    view = torch.matmul(view, kron(gates[high:]).T)
    return view.reshape(batch, dim)


@cache
def entangler_permutation(n_qubits: int, kind: str) -> torch.Tensor:
    """Indices ``perm`` such that ``state[:, perm]`` is ``state`` after the entangler ``kind`` (see :data:`ENTANGLERS`).

    Raises:
        ValueError: Unknown ``kind``.
    """
    if kind not in ENTANGLERS:
        raise ValueError(f"unknown entangler {kind!r}; allowed: {', '.join(ENTANGLERS)}")
    pairs = [(k, k + 1) for k in range(n_qubits - 1)]
    if kind == "ring" and n_qubits > 2:
        pairs.append((n_qubits - 1, 0))
    image = torch.arange(2**n_qubits)
    for control, target in pairs:
        c_bit, t_bit = 1 << (n_qubits - 1 - control), 1 << (n_qubits - 1 - target)
        image = torch.where(image & c_bit != 0, image ^ t_bit, image)
    # basis state b goes to image[b]: the new amplitude at image[b] is the old one at b
    return torch.argsort(image)


class _Permute(torch.autograd.Function):
    """``state[:, perm]`` whose backward is the inverse gather (not the scatter autograd would use)."""

    @staticmethod
    def forward(ctx: Any, state: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return state[:, perm]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad[:, inverse], None, None


def entangle(state: torch.Tensor, n_qubits: int, kind: str) -> torch.Tensor:
    """``state`` after the entangler ``kind`` (a permutation of the basis states)."""
    perm = entangler_permutation(n_qubits, kind)
    return _Permute.apply(state, perm, _inverse(n_qubits, kind))


@cache
def _inverse(n_qubits: int, kind: str) -> torch.Tensor:
    return torch.argsort(entangler_permutation(n_qubits, kind))


@cache
def basis_bits(n_qubits: int) -> torch.Tensor:
    """Bits of every basis index, wire 0 first: ``(2**n, n)`` of 0/1 (float64)."""
    index = torch.arange(2**n_qubits).unsqueeze(1)
    shifts = torch.arange(n_qubits - 1, -1, -1)
    return ((index >> shifts) & 1).to(torch.float64)


def probabilities(state: torch.Tensor) -> torch.Tensor:
    """``|⟨i|ψ⟩|²`` of every basis state, real, same batch shape."""
    return state.real**2 + state.imag**2 if state.is_complex() else state**2


def expval_z(probs: torch.Tensor) -> torch.Tensor:
    """``⟨Z_k⟩`` of every wire from the basis probabilities: ``(batch, n)``."""
    n = probs.shape[-1].bit_length() - 1
    signs = (1 - 2 * basis_bits(n)).to(probs.device, probs.dtype)
    return probs @ signs
