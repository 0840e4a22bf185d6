"""Linear-algebra helpers shared by the torch simulators: Kronecker products, gather-index tables, the ``Rot`` map.

Basis index ``i`` has qubit ``q`` as bit ``Q - 1 - q`` (wire 0 most significant, as in PennyLane).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

#: Complex dtype of each real dtype.
COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64}


def rot_affine() -> tuple[np.ndarray, np.ndarray]:
    """Matrix ``M [3, 16]`` and bias ``b [16]`` with ``Rot(w) = view_as_complex(c[:8] * c[8:])``.

    Here ``c = cos(w M + b)``. With ``a = (phi + omega) / 2``, ``d = (phi - omega) / 2``, ``t = theta / 2``:
    ``Rot = [[e^{-ia} cos t, -e^{id} sin t], [e^{-id} sin t, e^{ia} cos t]]``; every real and imaginary
    part is ``cos(a or d + shift) * cos(t + shift)``, listed in ``view_as_complex`` order.
    """
    a, d, t = (0.5, 0.0, 0.5), (0.5, 0.0, -0.5), (0.0, 0.5, 0.0)
    h = math.pi / 2
    first = [(a, 0), (a, h), (d, 2 * h), (d, h), (d, 0), (d, h), (a, 0), (a, -h)]
    second = [(t, 0), (t, 0), (t, -h), (t, -h), (t, -h), (t, -h), (t, 0), (t, 0)]
    cols = first + second
    matrix = np.array([c for c, _ in cols], dtype=np.float64).T
    bias = np.array([s for _, s in cols], dtype=np.float64)
    return matrix, bias


@functools.cache
def rot_affine_tensors(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rot_affine` as tensors ``(M [3, 16], b [16])`` of ``dtype`` on ``device`` (cached)."""
    matrix, bias = rot_affine()
    return torch.as_tensor(matrix, dtype=dtype, device=device), torch.as_tensor(bias, dtype=dtype, device=device)


def rowwise_matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b (+ bias)`` for ``a [C, ..., K]`` and ``b [K, N]``, as one product per leading row ``c``.

    A plain ``a @ b`` folds the leading dimensions into one matrix product whose rounding can depend on how
    many rows there are; a batched product over ``C`` gives every row the bits it would get alone (what
    batched federations rely on).
    """
    rows, k = a.shape[0], a.shape[-1]
    flat = a.reshape(rows, -1, k)
    wide = b.expand(rows, *b.shape)
    out = torch.bmm(flat, wide) if bias is None else torch.baddbmm(bias, flat, wide)
    return out.view(*a.shape[:-1], b.shape[-1])


def rot_matrices(weights: torch.Tensor) -> torch.Tensor:
    """``[C, ..., 3]`` weights to ``[C, ..., 2, 2]`` complex ``Rot`` matrices (differentiable by autograd)."""
    matrix, bias = rot_affine_tensors(weights.dtype, weights.device)
    c = torch.cos(rowwise_matmul(weights.reshape(weights.shape[0], -1, 3), matrix, bias)).view(-1, 16)
    return torch.view_as_complex((c[:, :8] * c[:, 8:]).view(*weights.shape[:-1], 2, 2, 2))


def kron_vectors(v: torch.Tensor) -> torch.Tensor:
    """Kronecker product over the second-to-last axis: ``[..., n, d] -> [..., d^n]`` (item 0 most significant).

    Uses a tree of broadcast multiplications (``~log2 n`` operations); ``n = 0`` gives ones ``[..., 1]``.
    """
    if v.shape[-2] == 0:
        return v.new_ones(*v.shape[:-2], 1)
    tails: list[torch.Tensor] = []
    while v.shape[-2] > 1:
        if v.shape[-2] % 2:
            tails.append(v[..., -1, :])
            v = v[..., :-1, :]
        left, right = v[..., 0::2, :], v[..., 1::2, :]
        v = (left.unsqueeze(-1) * right.unsqueeze(-2)).flatten(-2)
    out = v[..., 0, :]
    for tail in reversed(tails):
        out = (out.unsqueeze(-1) * tail.unsqueeze(-2)).flatten(-2)
    return out


def kron_matrices(m: torch.Tensor) -> torch.Tensor:
    """Kronecker product over the third-to-last axis: ``[..., n, d, d] -> [..., d^n, d^n]`` (item 0 first).

    ``n = 0`` gives ones ``[..., 1, 1]``.
    """
    if m.shape[-3] == 0:
        return m.new_ones(*m.shape[:-3], 1, 1)

    def kron2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = x[..., :, None, :, None] * y[..., None, :, None, :]
        return out.reshape(*out.shape[:-4], x.shape[-2] * y.shape[-2], x.shape[-1] * y.shape[-1])

    tails: list[torch.Tensor] = []
    while m.shape[-3] > 1:
        if m.shape[-3] % 2:
            tails.append(m[..., -1, :, :])
            m = m[..., :-1, :, :]
        m = kron2(m[..., 0::2, :, :], m[..., 1::2, :, :])
    out = m[..., 0, :, :]
    for tail in reversed(tails):
        out = kron2(out, tail)
    return out


def kron_vectors_grad(grad: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`kron_vectors` for 2-vectors (PyTorch's complex convention).

    Args:
        grad: ``[..., 2^n]`` gradient with respect to the Kronecker product.
        v: ``[..., n, 2]`` the factors.

    Returns:
        ``[..., n, 2]``: entry ``[..., q, i]`` is ``sum_{j: j_q = i} grad[..., j] conj(prod_{p != q} v[..., p, j_p])``.
    """
    n = v.shape[-2]
    if n == 1:
        return grad.unsqueeze(-2)
    index, select = _leave_one_out(n)
    batch = v.shape[:-2]
    flat = v.reshape(-1, 2 * n)
    others = flat[:, index.to(flat.device)].view(-1, n, n - 1, 2**n).prod(2)  # [N, n, 2^n]: prod_{p != q} v_p[j_p]
    weighted = grad.reshape(-1, 1, 2**n) * others.conj()
    rows = weighted.view(batch[0] if batch else 1, -1, n * 2**n)
    return rowwise_matmul(rows, select.to(weighted)).view(*batch, n, 2)


@functools.cache
def _leave_one_out(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps of :func:`kron_vectors_grad`: ``[n * (n-1) * 2^n]`` gather index and ``[n 2^n, 2 n]`` selector."""
    bits = basis_bits(n)  # [d, n]
    index = np.array([[2 * p + bits[:, p] for p in range(n) if p != q] for q in range(n)])  # [n, n-1, d]
    select = np.zeros((n * 2**n, 2 * n))
    for q in range(n):
        select[q * 2**n + np.arange(2**n), 2 * q + bits[:, q]] = 1.0
    return torch.as_tensor(index.reshape(-1)), torch.as_tensor(select)


def to_device(obj: Any, device: torch.device) -> Any:
    """Move the tensors in ``obj`` (a tensor, or a dict/list/tuple of them) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {key: to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(value, device) for value in obj)
    return obj


def basis_bits(n: int) -> np.ndarray:
    """``[2^n, n]`` bits of the basis indices, qubit 0 most significant."""
    return (np.arange(2**n)[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1


def kron_index(n: int, transpose: bool = False, col_source: np.ndarray | None = None) -> np.ndarray:
    """Gather index whose product over the first axis is a Kronecker product of 2x2 matrices.

    Indexing ``n`` stacked 2x2 matrices (flattened to ``[4 n]``) with the result gives ``[n, d, d]`` entries whose
    product over the first axis is their Kronecker product ``K`` (or ``K^T``).

    Args:
        n: Number of matrices.
        transpose: Build ``K^T`` instead of ``K``.
        col_source: Optional ``[d]``: column ``j`` of the result is column ``col_source[j]`` of ``K`` (``K^T``).
    """
    bits = basis_bits(n).T  # [n, d]
    row = bits[:, :, None]
    col = bits[:, None, :] if col_source is None else bits[:, None, col_source]
    entry = 2 * col + row if transpose else 2 * row + col
    return (4 * np.arange(n)[:, None, None] + entry).reshape(-1)


def xor_phase(n: int) -> np.ndarray:
    """``(-i)^popcount(i xor j)``, ``[d, d]``: the phases of the entries of a Kronecker product of ``RX`` gates."""
    bits = basis_bits(n)
    return (-1j) ** (bits[:, None, :] ^ bits[None, :, :]).sum(-1)


def partial_trace_matrix(n_qubits: int, transposed: bool = False) -> np.ndarray:
    """The linear map from ``X [d, d]`` (flattened, ``d = 2^n``) to ``Tr_{not q} X [2, 2]`` for every qubit ``q``.

    Args:
        n_qubits: Qubits ``n``.
        transposed: Take ``X^T`` as input instead (the result is still ``Tr_{not q} X``).

    Returns:
        ``[d * d, n * 4]`` 0/1 matrix ``P`` with ``(X.flatten() @ P).view(n, 2, 2)[q] = Tr_{not q} X``.
    """
    d = 2**n_qubits
    idx = np.arange(d)
    out = np.zeros((d * d, 4 * n_qubits))
    for q in range(n_qubits):
        shift = n_qubits - 1 - q
        bits = (idx >> shift) & 1
        rest = idx & ~(1 << shift)
        same_rest = rest[:, None] == rest[None, :]
        column = 4 * q + (2 * bits[None, :] + bits[:, None] if transposed else 2 * bits[:, None] + bits[None, :])
        rows = (idx[:, None] * d + idx[None, :])[same_rest]
        out[rows, column[same_rest]] = 1.0
    return out


def apply_kron(psi: torch.Tensor, a_mat: torch.Tensor | None, bt_mat: torch.Tensor) -> torch.Tensor:
    """``(A (x) B) psi`` on the layout ``[C, R, B, K]`` given ``A [C, R, R]`` and ``B^T [C, K, K]``."""
    c, r, b, k = psi.shape
    if a_mat is not None:
        psi = torch.bmm(a_mat, psi.view(c, r, b * k))
    return torch.bmm(psi.view(c, r * b, k), bt_mat).view(c, r, b, k)


def apply_kron_per_sample(psi: torch.Tensor, emb_a: torch.Tensor | None, emb_b: torch.Tensor) -> torch.Tensor:
    """``(E_A(b) (x) E_B(b)) psi_b`` given per-sample ``E_A [C, B, R, R]`` and ``E_B^T [C, B, K, K]``."""
    c, r, b, k = psi.shape
    if emb_a is None:
        return torch.matmul(psi.view(c, b, 1, k), emb_b).view(c, r, b, k)
    psi = torch.einsum("cbij,cjbk->cibk", emb_a, psi)
    return torch.einsum("cibk,cbkl->cibl", psi, emb_b).contiguous()
