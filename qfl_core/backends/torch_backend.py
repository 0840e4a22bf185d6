"""The ``torch`` backend: an exact, batched statevector / mixed-state simulator of the ansatz in PyTorch.

All ``C`` clients and their ``B`` samples are simulated in one call with a handful of tensor operations. At
these sizes a federated round costs Python and dispatch overhead per operation, not arithmetic, so the design
minimizes operations, and the noiseless path (the common case) is one :class:`torch.autograd.Function` with a
hand-written adjoint backward: no autograd graph is built for the simulation.

Noiseless statevector (``Q`` qubits, ``D = 2^Q``; wire 0 is the most significant bit, as in PennyLane):

* All ``C * L * Q`` ``Rot`` gates come from one affine map and one ``cos`` of the weights (``sin(a) =
  cos(a - pi/2)``): every real and imaginary part of ``Rot`` is a product of two cosines.
* States are stored as ``[C, R, B, K]``: the register is split into a first part (``R = 2^a`` amplitudes) and a
  second part (``K = 2^(Q-a)``), so a layer of single-qubit gates, the Kronecker product ``A (x) B``, costs two
  batched matrix products ``A psi`` and ``psi B^T`` without copies. Kronecker products of gates are one gather
  and one product over a precomputed index.
* ``engine="dense"`` (``a = 0``, ``Q <= 5``, or 3 with re-uploading): one ``D x D`` matrix per client
  and layer with that layer's CNOT permutation folded into its columns; the embedded input ``RX(x)|0..0>`` is a
  product state. ``engine="split"`` (``a = Q // 2``): layer 0 keeps the state a product (``Rot RX(x)|0>`` per
  qubit); the CNOT blocks are gathers, the last one folded into the Pauli-Z sign table.
* Re-uploading applies the per-sample ``RX`` layer (a Kronecker product too) before every later layer.
* ``<Z_q> = sum_i |psi_i|^2 S[i, q]`` is one real matrix product.
* Backward (adjoint method, one sweep): the cotangent ``g`` is pulled back through each layer with the adjoint
  gates, and the gradient of each single-qubit gate ``G_q`` is ``G_q Tr_{not q}(sum_b g_b phi_b^H)`` (``phi`` the
  layer's input; valid because the gates are unitary): one batched product and one fixed linear map per
  register part and layer. Layer 0 of the split engine uses leave-one-out products of the product state.

Noise (any client with depolarizing ``p > 0``), exact, with ordinary autograd: the Pauli-transfer
representation. A state is its Pauli vector ``r_P = Tr(P rho)`` (``4^Q`` real numbers); ``Rot`` layers are
Kronecker products of real 4x4 transfer matrices, a CNOT block is a signed permutation of Pauli strings, and
depolarizing every qubit scales each string by ``(1 - 4p/3)^weight``, exactly
``rho -> (1 - 4p/3) rho + (4p/3) I/2 (x) Tr_q rho`` per qubit. Without re-uploading the measured ``Z_q`` are
evolved backwards (Heisenberg picture), so the work scales with ``Q`` observables rather than ``B`` samples.
Cost grows as ``4^Q``: fast up to ~5 qubits, ~0.1 s per call at 6, seconds at 8.

Readout bit flips ``r``: exact for expectations, ``<Z_q> -> (1 - 2r) <Z_q>``; with shots the outcome
distribution goes through the per-qubit confusion matrix before sampling.

Finite shots ``S``: ``S`` joint outcomes are drawn exactly from the (noisy) distribution over the ``2^Q`` basis
states by a tree of ``Q`` conditional binomial draws (one vectorized ``torch.binomial`` per qubit, from the
caller's generator), i.e. one multinomial draw of the outcome counts; ``<Z_q>`` is the mean of the ``+-1``
outcomes, a multiple of ``2/S``. The gradient is that of the exact expectation (straight-through estimator):
``z = z_sampled + (z_exact - z_exact.detach())``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from qflgym.qfl_core.backends.base import Backend, ClientNoise
from qflgym.qfl_core.circuits import CircuitSpec, z_signs
from qflgym.qfl_core.config import BackendConfig

_COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64}


def _rot_affine() -> tuple[np.ndarray, np.ndarray]:
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
    return (weighted.view(-1, n * 2**n) @ select.to(weighted)).view(*batch, n, 2)


@functools.cache
def _leave_one_out(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps of :func:`kron_vectors_grad`: ``[n * (n-1) * 2^n]`` gather index and ``[n 2^n, 2 n]`` selector."""
    bits = _bits(n)  # [d, n]
    index = np.array([[2 * p + bits[:, p] for p in range(n) if p != q] for q in range(n)])  # [n, n-1, d]
    select = np.zeros((n * 2**n, 2 * n))
    for q in range(n):
        select[q * 2**n + np.arange(2**n), 2 * q + bits[:, q]] = 1.0
    return torch.as_tensor(index.reshape(-1)), torch.as_tensor(select)


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


def _to_device(obj: Any, device: torch.device) -> Any:
    """Move the tensors in ``obj`` (a tensor, or a dict/list/tuple of them) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {key: _to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(value, device) for value in obj)
    return obj


def _bits(n: int) -> np.ndarray:
    """``[2^n, n]`` bits of the basis indices, qubit 0 most significant."""
    return (np.arange(2**n)[:, None] >> (n - 1 - np.arange(n))[None, :]) & 1


def _kron_index(n: int, transpose: bool = False, col_source: np.ndarray | None = None) -> np.ndarray:
    """Gather index whose product over the first axis is a Kronecker product of 2x2 matrices.

    Indexing ``n`` stacked 2x2 matrices (flattened to ``[4 n]``) with the result gives ``[n, d, d]`` entries whose
    product over the first axis is their Kronecker product ``K`` (or ``K^T``).

    Args:
        n: Number of matrices.
        transpose: Build ``K^T`` instead of ``K``.
        col_source: Optional ``[d]``: column ``j`` of the result is column ``col_source[j]`` of ``K`` (``K^T``).
    """
    bits = _bits(n).T  # [n, d]
    row = bits[:, :, None]
    col = bits[:, None, :] if col_source is None else bits[:, None, col_source]
    entry = 2 * col + row if transpose else 2 * row + col
    return (4 * np.arange(n)[:, None, None] + entry).reshape(-1)


def _xor_phase(n: int) -> np.ndarray:
    """``(-i)^popcount(i xor j)``, ``[d, d]``: the phases of the entries of a Kronecker product of ``RX`` gates."""
    bits = _bits(n)
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


def sample_counts(probs: torch.Tensor, shots: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw multinomial outcome counts exactly with a tree of conditional binomials.

    Qubit by qubit (most significant first), the shots that reached each prefix of outcomes are split by a
    binomial draw with the conditional probability of the next bit being 1. The result is distributed exactly
    as ``Multinomial(shots, probs)``.

    Args:
        probs: ``[N, 2^Q]`` outcome probabilities (rows summing to 1; no gradient).
        shots: ``[N]`` shots per row (floating point, integral values).
        generator: Random source.

    Returns:
        ``[N, 2^Q]`` counts (floating point, integral values) summing to ``shots`` per row.
    """
    n, dim = probs.shape
    n_qubits = dim.bit_length() - 1
    probs = probs.clamp_min(0)
    marginals = [probs]
    for _ in range(n_qubits):
        marginals.append(marginals[-1].view(n, -1, 2).sum(-1))
    marginals.reverse()  # marginals[k]: [N, 2^k] distribution of the first k bits
    counts = shots.reshape(n, 1)
    for k in range(n_qubits):
        pair = marginals[k + 1].view(n, 2**k, 2)
        total = pair.sum(-1)
        p_one = torch.where(total > 0, pair[..., 1] / total.clamp_min(torch.finfo(probs.dtype).tiny), 0.0)
        ones = torch.binomial(counts, p_one.clamp(0.0, 1.0), generator=generator)
        counts = torch.stack((counts - ones, ones), -1).view(n, 2 ** (k + 1))
    return counts


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


class _NoiselessCircuit(torch.autograd.Function):
    """``weights -> (z, psi)`` with the adjoint backward of :meth:`TorchBackend._backward`."""

    @staticmethod
    def forward(ctx: Any, weights: torch.Tensor, backend: TorchBackend, x: torch.Tensor) -> Any:
        z, saved = backend._forward(weights, x, save=True)
        ctx.backend, ctx.saved = backend, saved
        ctx.mark_non_differentiable(saved.psi)
        return z, saved.psi

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_z: torch.Tensor, _grad_psi: torch.Tensor) -> Any:
        return ctx.backend._backward(ctx.saved, grad_z), None, None


class TorchBackend(Backend):
    """Batched exact simulator of the ansatz (see the module docstring for the method).

    Args:
        spec: The circuit.
        config: Only ``dtype`` is used (``float64`` simulates in ``complex128``, ``float32`` in ``complex64``).

    Attributes:
        engine: ``"dense"`` (one ``2^Q x 2^Q`` matrix per layer) or ``"split"`` (two Kronecker factors), chosen
            from the qubit count; both are exact and may be overridden after construction.
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
        self._consts: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._layouts: dict[tuple[Any, ...], Any] = {}
        self._perms = [spec.cnot_permutation(layer) for layer in range(spec.n_layers)]

    # ------------------------------------------------------------------ constants
    @property
    def _split_at(self) -> int:
        """Qubits in the first register part (``0``: dense)."""
        return 0 if self.engine == "dense" else self.spec.n_qubits // 2

    def _const(self, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        """Constants of one dtype: ``Rot`` map, sign tables, Kronecker and partial-trace index maps."""
        key = (dtype, self._split_at, device)
        if key not in self._consts:
            q, a = self.spec.n_qubits, self._split_at
            cdtype = _COMPLEX[dtype]
            matrix, bias = _rot_affine()
            # dense: CNOT permutations folded into the layer matrices; split: the last one into the signs
            signs_last = z_signs(q) if a == 0 else z_signs(q, self._perms[-1])
            kron_a, kron_b = _kron_index(a), _kron_index(q - a, transpose=True) + 4 * a
            kron_dense = [
                _kron_index(q, transpose=True, col_source=np.argsort(f)) + 4 * q * layer
                for layer, f in enumerate(self._perms)
            ]
            phase = (-1j) ** _bits(q).sum(1)
            self._consts[key] = {
                "rot_matrix": torch.as_tensor(matrix, dtype=dtype),
                "rot_bias": torch.as_tensor(bias, dtype=dtype),
                "rot_grad": torch.as_tensor(-matrix.T, dtype=dtype),
                "half_pi": torch.tensor([0.0, math.pi / 2], dtype=dtype),
                "ket_phase": torch.tensor([1.0, -1j], dtype=cdtype),
                "signs": torch.as_tensor(z_signs(q), dtype=dtype),
                "signs2": torch.as_tensor(np.repeat(signs_last, 2, axis=0), dtype=dtype),
                "signs_t2": torch.as_tensor(2.0 * signs_last.T, dtype=dtype),
                "finv_last": None if a == 0 else torch.as_tensor(np.argsort(self._perms[-1])),
                "kron_a": torch.as_tensor(kron_a),
                "kron_b": torch.as_tensor(kron_b),
                "kron_ab": torch.as_tensor(np.concatenate([kron_a, kron_b])),
                "kron_dense": torch.as_tensor(np.concatenate(kron_dense)).view(1, -1),
                "embed_phase": torch.as_tensor(phase, dtype=cdtype),
                "xor_phase_b": torch.as_tensor(_xor_phase(q - a), dtype=cdtype),
                "ptrace_a": torch.as_tensor(partial_trace_matrix(a), dtype=cdtype) if a else None,
                "ptrace_b": torch.as_tensor(partial_trace_matrix(q - a, transposed=True), dtype=cdtype),
            }
            self._consts[key] = _to_device(self._consts[key], device)
        return self._consts[key]

    def _layout(self, batch: int, device: torch.device) -> dict[str, Any]:
        """Index maps on the state layout ``[C, R, B, K]`` for batch size ``B`` (cached).

        Dense: the gather index of the embedded product state (and of the per-sample ``RX`` layer with
        re-uploading). Split: the CNOT permutations and their inverses.
        """
        a = self._split_at
        key = (batch, a, device)
        if key not in self._layouts:
            if len(self._layouts) >= 64:
                self._layouts.clear()
            q = self.spec.n_qubits
            rows, cols = 2**a, 2 ** (q - a)
            b = np.arange(batch)[None, :, None]
            layout: dict[str, Any] = {}
            if a == 0:
                embed = b[..., None] * 2 * q + 2 * np.arange(q) + _bits(q)[None, None]  # [1, B, D, Q]
                layout["embed"] = torch.as_tensor(embed.reshape(1, -1))
                if self.spec.reupload:
                    bits = _bits(q).T  # [Q, D]
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
            self._layouts[key] = _to_device(layout, device)
        return self._layouts[key]

    # ------------------------------------------------------------------ evaluation
    def expvals(
        self, weights: torch.Tensor, x: torch.Tensor, noise: ClientNoise, generator: torch.Generator
    ) -> torch.Tensor:
        """Pauli-Z expectations ``[C, B, Q]`` (see :meth:`Backend.expvals` and the module docstring)."""
        self.check_inputs(weights, x, noise)
        n_clients, batch = x.shape[0], x.shape[1]
        dtype = weights.dtype
        if dtype not in _COMPLEX:
            raise TypeError(f"weights must be float64 or float32, got {dtype}")
        if n_clients == 0 or batch == 0:
            return weights.new_zeros(n_clients, batch, self.spec.n_qubits) + 0.0 * weights.sum()
        x = x.detach().to(dtype)
        probs = None
        if any(noise.depolarizing):
            z, probs = self._noisy(weights, x, noise, need_probs=noise.has_shots)
        else:
            if torch.is_grad_enabled() and weights.requires_grad:
                z, psi = _NoiselessCircuit.apply(weights, self, x)
            else:
                z, saved = self._forward(weights.detach(), x, save=False)
                psi = saved.psi
            if noise.has_shots:
                probs = self._probabilities(psi)
        if any(noise.readout_error):
            scale = torch.tensor([1.0 - 2.0 * r for r in noise.readout_error], dtype=dtype, device=z.device)
            z = z * scale.view(-1, 1, 1)
        if probs is not None and noise.has_shots:
            z = self._shots(z, probs, noise, generator)
        return z

    # ------------------------------------------------------------------ noiseless path
    @staticmethod
    def _apply(psi: torch.Tensor, a_mat: torch.Tensor | None, bt_mat: torch.Tensor) -> torch.Tensor:
        """``(A (x) B) psi`` on the layout ``[C, R, B, K]`` given ``A [C, R, R]`` and ``B^T [C, K, K]``."""
        c, r, b, k = psi.shape
        if a_mat is not None:
            psi = torch.bmm(a_mat, psi.view(c, r, b * k))
        return torch.bmm(psi.view(c, r * b, k), bt_mat).view(c, r, b, k)

    @staticmethod
    def _apply_per_sample(psi: torch.Tensor, emb_a: torch.Tensor | None, emb_b: torch.Tensor) -> torch.Tensor:
        """``(E_A(b) (x) E_B(b)) psi_b`` given per-sample ``E_A [C, B, R, R]`` and ``E_B^T [C, B, K, K]``."""
        c, r, b, k = psi.shape
        if emb_a is None:
            return torch.matmul(psi.view(c, b, 1, k), emb_b).view(c, r, b, k)
        psi = torch.einsum("cbij,cjbk->cibk", emb_a, psi)
        return torch.einsum("cibk,cbkl->cibl", psi, emb_b).contiguous()

    def _forward(self, weights: torch.Tensor, x: torch.Tensor, save: bool) -> tuple[torch.Tensor, _Saved]:
        """Noiseless statevector simulation without autograd; returns ``z [C, B, Q]`` and the intermediates."""
        spec = self.spec
        const = self._const(weights.dtype, weights.device)
        n_clients, batch = x.shape[0], x.shape[1]
        n_layers, q, a = spec.n_layers, spec.n_qubits, self._split_at
        rows, cols = 2**a, 2 ** (q - a)
        layout = self._layout(batch, weights.device)
        with torch.no_grad():
            angles = torch.addmm(const["rot_bias"], weights.reshape(-1, 3), const["rot_matrix"])
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
            if a == 0:  # product state of real amplitudes times the phase (-i)^popcount; layer 0 by matrix
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
                        psi = self._apply_per_sample(psi, *emb)
                if save:
                    states.append(psi)
                psi = self._apply(psi, None if a_mats is None else a_mats[:, layer], bt_mats[:, layer])
            parts = torch.view_as_real(psi)
            if a:
                parts = parts.transpose(1, 2)
            parts = parts.reshape(n_clients, batch, -1)
            z = (parts * parts) @ const["signs2"]
        return z, _Saved(weights.shape, angles, cos, rot, a_mats, bt_mats, emb, product, states, psi)

    def _backward(self, saved: _Saved, grad_z: torch.Tensor) -> torch.Tensor:
        """Adjoint-method gradient of ``sum(grad_z * z)`` with respect to the weights."""
        spec = self.spec
        const = self._const(saved.angles.dtype, saved.angles.device)
        psi = saved.psi
        n_clients, rows, batch, cols = psi.shape
        a, q = self._split_at, spec.n_qubits
        layout = self._layout(batch, psi.device)
        # dL/dpsi in PyTorch's convention (dL/dRe + i dL/dIm) for L = sum grad_z * sum_i |psi_i|^2 S[i, q]
        h = grad_z.to(saved.angles.dtype) @ const["signs_t2"]  # [C, B, D]
        if a:
            h = h.view(n_clients, batch, rows, cols).transpose(1, 2).contiguous()
        grad = h.reshape(n_clients, rows, batch, cols) * psi
        traces: list[torch.Tensor] = []
        first = spec.n_layers - len(saved.states)
        for layer in reversed(range(first, spec.n_layers)):
            phi = saved.states[layer - first]
            a_mat = None if saved.a_mats is None else saved.a_mats[:, layer]
            grad = self._apply(grad, None if a_mat is None else a_mat.mH, saved.bt_mats[:, layer].mH)
            # sum_b g_b phi_b^H, reduced to each register part and then to each qubit
            yb = torch.bmm(phi.view(n_clients, -1, cols).mH, grad.view(n_clients, -1, cols))
            trace = (yb.view(n_clients, -1) @ const["ptrace_b"]).view(n_clients, q - a, 2, 2)
            if a_mat is not None:
                xa = torch.bmm(grad.view(n_clients, rows, -1), phi.view(n_clients, rows, -1).mH)
                trace_a = (xa.view(n_clients, -1) @ const["ptrace_a"]).view(n_clients, a, 2, 2)
                trace = torch.cat((trace_a, trace), 1)
            traces.append(trace)
            if layer:
                if saved.emb is not None:
                    emb_a, emb_b = saved.emb
                    grad = self._apply_per_sample(grad, None if emb_a is None else emb_a.conj(), emb_b.conj())
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
        return ((grad_cos.view(-1, 16) * torch.sin(saved.angles)) @ const["rot_grad"]).view(saved.shape)

    def _probabilities(self, psi: torch.Tensor) -> torch.Tensor:
        """Outcome probabilities ``[C, B, D]`` in the true basis from a final state in the layout."""
        with torch.no_grad():
            n_clients, _, batch, _ = psi.shape
            probs = (psi.real.square() + psi.imag.square()).transpose(1, 2).reshape(n_clients, batch, -1)
            finv = self._const(probs.dtype, probs.device)["finv_last"]
            return probs if finv is None else probs.index_select(-1, finv)

    # ------------------------------------------------------------------ noisy path (autograd)
    def _rot(self, weights: torch.Tensor) -> torch.Tensor:
        """``[C, L, Q, 3]`` weights to ``[C, L, Q, 2, 2]`` complex ``Rot`` matrices (differentiable)."""
        const = self._const(weights.dtype, weights.device)
        c = torch.cos(torch.addmm(const["rot_bias"], weights.reshape(-1, 3), const["rot_matrix"]))
        return torch.view_as_complex((c[:, :8] * c[:, 8:]).view(*weights.shape[:-1], 2, 2, 2))

    def _pauli_const(self, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
        """Constants of the Pauli-transfer simulation (see :meth:`_noisy`)."""
        key = ("pauli", dtype, device)
        if key not in self._consts:
            q = self.spec.n_qubits
            a = q // 2
            digits = _pauli_digits(q)  # [4^Q, Q]
            weight = (digits > 0).sum(1)
            zsel = np.zeros((4**q, q))
            for qubit in range(q):
                zsel[3 * 4 ** (q - 1 - qubit), qubit] = 1.0
            subsets = _bits(q)  # Z-strings Z_S, S as bits
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
                "transfer_map": torch.as_tensor(transfer_map, dtype=_COMPLEX[dtype]),
                "weight": torch.as_tensor(weight.reshape(4**a, 1, 4 ** (q - a)), dtype=dtype),
                "zsel": torch.as_tensor(zsel.reshape(4**a, 4 ** (q - a), q), dtype=dtype),
                "zstrings": torch.as_tensor(zstrings),
                "hadamard": torch.as_tensor(hadamard, dtype=dtype),
                "obs_all": torch.as_tensor(np.ascontiguousarray(observables), dtype=dtype),
                "obs_z": torch.as_tensor(np.ascontiguousarray(observables[:, singles]), dtype=dtype),
                "singles": torch.as_tensor(singles),
                "signs": [torch.as_tensor(sign.reshape(4**a, 1, 4 ** (q - a)), dtype=dtype) for _, sign in tables],
            }
            self._consts[key] = _to_device(self._consts[key], device)
        return self._consts[key]

    def _pauli_layout(self, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Gather indices (and inverses) of the CNOT blocks on the Pauli layout ``[C, 4^a, B, 4^(Q-a)]``."""
        key = ("pauli", batch, device)
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
            self._layouts[key] = _to_device(index, device)
        return self._layouts[key]

    def _noisy(
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
        const = self._pauli_const(weights.dtype, weights.device)
        rot = self._rot(weights)  # [C, L, Q, 2, 2]
        flat = rot.reshape(-1, 4)
        outer = (flat.unsqueeze(-1) * flat.conj().unsqueeze(-2)).view(-1, 16)  # R[b, c] conj(R[a, d])
        transfer = (outer @ const["transfer_map"]).real.view(*rot.shape[:3], 4, 4)  # [C, L, Q, 4, 4]
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
            final = self._pauli_forward(state, mats, emb, scale)
            z = torch.einsum("crbk,rkq->cbq", final, const["zsel"])
            probs = self._pauli_probs(final) if need_probs else None
            return z, probs
        z = self._pauli_backward(const["obs_z"], mats, scale, state)
        probs = None
        if need_probs:  # no gradient needed: the cheaper picture for 2^Q observables vs B samples
            with torch.no_grad():
                detached = (None if mats[0] is None else mats[0].detach(), mats[1].detach())
                if 2**q <= batch:
                    probs = self._pauli_backward(const["obs_all"], detached, scale, state) @ const["hadamard"]
                else:
                    probs = self._pauli_probs(self._pauli_forward(state, detached, None, scale))
        return z, probs

    def _pauli_forward(
        self,
        state: torch.Tensor,
        mats: tuple[torch.Tensor | None, torch.Tensor],
        emb: tuple[torch.Tensor | None, torch.Tensor] | None,
        scale: torch.Tensor,
    ) -> torch.Tensor:
        """Schrodinger picture: evolve Pauli vectors ``[C, 4^a, N, 4^(Q-a)]`` through all layers."""
        const = self._pauli_const(state.dtype, state.device)
        n_clients, rows, n, cols = state.shape
        layout = self._pauli_layout(n, state.device)
        for layer in range(self.spec.n_layers):
            if layer and emb is not None:
                state = self._apply_per_sample(state, *emb)
            state = self._apply(state, None if mats[0] is None else mats[0][:, layer], mats[1][:, layer])
            if self.spec.n_qubits > 1:
                index = layout[layer][0].expand(n_clients, -1)
                state = state.view(n_clients, -1).gather(1, index).view(n_clients, rows, n, cols)
                state = state * const["signs"][layer]
            state = state * scale
        return state

    def _pauli_backward(
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
        const = self._pauli_const(state.dtype, state.device)
        n_clients, rows, _, cols = state.shape
        n = observables.shape[1]
        layout = self._pauli_layout(n, state.device)
        obs = observables.expand(n_clients, -1, -1, -1).contiguous()
        for layer in reversed(range(self.spec.n_layers)):
            obs = obs * scale
            if self.spec.n_qubits > 1:
                index = layout[layer][1].expand(n_clients, -1)
                obs = (obs * const["signs"][layer]).view(n_clients, -1).gather(1, index).view(n_clients, rows, n, cols)
            obs = self._apply(obs, None if mats[0] is None else mats[0][:, layer].mT, mats[1][:, layer].mT)
        n_clients, rows, n, cols = obs.shape
        flat_obs = obs.transpose(1, 2).reshape(n_clients, n, rows * cols)
        flat_state = state.permute(0, 1, 3, 2).reshape(n_clients, rows * cols, -1)
        return torch.bmm(flat_obs, flat_state).transpose(1, 2)

    def _pauli_probs(self, state: torch.Tensor) -> torch.Tensor:
        """True-basis outcome probabilities ``[C, N, 2^Q]`` of Pauli vectors ``[C, 4^a, N, 4^(Q-a)]``."""
        const = self._pauli_const(state.dtype, state.device)
        with torch.no_grad():
            flat = state.detach().transpose(1, 2).reshape(state.shape[0], state.shape[2], -1)
            return flat.index_select(-1, const["zstrings"]) @ const["hadamard"]

    # ------------------------------------------------------------------ shots
    def _shots(
        self, z: torch.Tensor, probs: torch.Tensor, noise: ClientNoise, generator: torch.Generator
    ) -> torch.Tensor:
        """Replace the values of clients with finite shots by shot estimates (straight-through gradient).

        Sampling runs on the generator's device.
        """
        chosen = [c for c, s in enumerate(noise.shots) if s is not None]
        _, batch, q = z.shape
        with torch.no_grad():
            probs = probs.detach()[chosen].to(generator.device)  # [C', B, D] true basis
            flips = [noise.readout_error[c] for c in chosen]
            if any(flips):  # per-qubit confusion: p(b) -> (1 - r) p(b) + r p(b with bit q flipped)
                r = torch.tensor(flips, dtype=probs.dtype, device=probs.device).view(-1, 1, 1, 1)
                for qubit in range(q):
                    pv = probs.reshape(len(chosen), batch * 2**qubit, 2, -1)
                    probs = ((1 - r) * pv + r * pv.flip(2)).reshape(probs.shape)
            shots = torch.tensor([float(noise.shots[c]) for c in chosen], dtype=probs.dtype, device=probs.device)
            shots = shots.view(-1, 1).expand(-1, batch).reshape(-1)
            counts = sample_counts(probs.reshape(len(chosen) * batch, -1), shots, generator)
            sampled = (counts @ self._const(probs.dtype, probs.device)["signs"]) / shots.unsqueeze(-1)
            values = z.detach().clone()
            values[chosen] = sampled.view(len(chosen), batch, q).to(values.device)
        return values + (z - z.detach())
