"""Finite shots: exact multinomial outcome counts and straight-through shot estimates of ``<Z_q>``.

``S`` joint outcomes are drawn exactly from the (noisy) distribution over the ``2^Q`` basis states by a tree of
``Q`` conditional binomial draws (one vectorized ``torch.binomial`` per qubit, from the caller's generator), i.e.
one multinomial draw of the outcome counts; ``<Z_q>`` is the mean of the ``+-1`` outcomes, a multiple of
``2/S``. Readout bit flips ``r`` act on the distribution through the per-qubit confusion matrix before
sampling. The gradient is that of the exact expectation (straight-through estimator):
``z = z_sampled + (z_exact - z_exact.detach())``.

With a CPU generator the arithmetic around the draws runs in NumPy on views of the same memory: at these sizes
(a few thousand numbers) a NumPy operation costs a fraction of a torch one. The operations are the same
elementwise IEEE operations in the same order (the pair sums of the tree are ``a + b``), and the draws are the
same ``torch.binomial`` calls on the same numbers, so both paths give the same counts bit for bit.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np
import torch

from qflgym.qfl_core.backends.base import ClientNoise
from qflgym.qfl_core.circuits import z_signs


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
    if _on_cpu(generator, probs, shots):
        return torch.from_numpy(_sample_counts(probs.detach().numpy(), shots.detach().numpy(), generator, np))
    return _sample_counts(probs, shots, generator, torch)


def _on_cpu(generator: torch.Generator, *tensors: torch.Tensor) -> bool:
    return generator.device.type == "cpu" and all(t.device.type == "cpu" for t in tensors)


def _binomial(counts: Any, p_one: Any, generator: torch.Generator) -> Any:
    """``torch.binomial`` on tensors, or on the memory of NumPy arrays (returning an array)."""
    if isinstance(counts, np.ndarray):
        return torch.binomial(torch.from_numpy(counts), torch.from_numpy(p_one), generator=generator).numpy()
    return torch.binomial(counts, p_one, generator=generator)


def _sample_counts(probs: Any, shots: Any, generator: torch.Generator, xp: ModuleType) -> Any:
    """:func:`sample_counts` on NumPy arrays (``xp = np``) or tensors (``xp = torch``)."""
    n, dim = probs.shape
    n_qubits = dim.bit_length() - 1
    marginal = probs.clip(min=0.0)
    marginals = [marginal]
    for _ in range(n_qubits):  # pair sums a + b: marginals[k] is the distribution of the first Q - k bits
        marginal = marginal[:, 0::2] + marginal[:, 1::2]
        marginals.append(marginal)
    marginals.reverse()  # marginals[k]: [N, 2^k] distribution of the first k bits
    tiny = float(np.finfo(probs.dtype).tiny if xp is np else torch.finfo(probs.dtype).tiny)
    counts = shots.reshape(n, 1)
    for k in range(n_qubits):
        total, ones_mass = marginals[k], marginals[k + 1][:, 1::2]
        p_one = xp.where(total > 0, ones_mass / total.clip(min=tiny), 0.0).clip(0.0, 1.0)
        ones = _binomial(counts, p_one, generator)
        counts = xp.stack((counts - ones, ones), -1).reshape(n, 2 ** (k + 1))
    return counts


def _like(values: Any, like: Any) -> Any:
    """``values`` as an array of ``like``'s kind, dtype (and device)."""
    if isinstance(like, np.ndarray):
        return np.asarray(values, dtype=like.dtype)
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


@functools.cache
def _signs(n_qubits: int) -> np.ndarray:
    return z_signs(n_qubits)


def shot_estimates(
    z: torch.Tensor, probs: torch.Tensor, noise: ClientNoise, generator: torch.Generator
) -> torch.Tensor:
    """Replace the values of clients with finite shots by shot estimates (straight-through gradient).

    Args:
        z: ``[C, B, Q]`` exact expectations (after readout noise), possibly with a gradient.
        probs: ``[C, B, 2^Q]`` outcome probabilities in the true basis (before readout noise).
        noise: The clients' shots and readout errors.
        generator: The source of the draws; sampling runs on its device.

    Returns:
        ``[C, B, Q]``: shot estimates where ``noise.shots`` is finite, ``z`` elsewhere; gradient that of ``z``
        (a tensor without gradient when ``z`` has none).
    """
    chosen = [c for c, s in enumerate(noise.shots) if s is not None]
    _, batch, q = z.shape
    with torch.no_grad():
        probs = probs.detach()[chosen].to(generator.device)  # [C', B, D] true basis
        if _on_cpu(generator, probs):
            sampled = torch.from_numpy(_shot_means(probs.numpy(), noise, chosen, generator, np))
        else:
            sampled = _shot_means(probs, noise, chosen, generator, torch)
        values = z.detach().clone()
        values[chosen] = sampled.view(len(chosen), batch, q).to(values.device)
    if not z.requires_grad:
        return values
    return values + (z - z.detach())


def _shot_means(probs: Any, noise: ClientNoise, chosen: list[int], generator: torch.Generator, xp: ModuleType) -> Any:
    """``[C' B, Q]`` shot means of the rows ``chosen`` from their true-basis ``probs [C', B, D]`` (``xp`` as above)."""
    n_chosen, batch, dim = probs.shape
    q = dim.bit_length() - 1
    flips = [noise.readout_error[c] for c in chosen]
    if any(flips):  # per-qubit confusion: p(b) -> (1 - r) p(b) + r p(b with bit q flipped)
        r = _like(flips, probs).reshape(-1, 1, 1, 1)
        keep = 1 - r
        for qubit in range(q):
            pv = probs.reshape(n_chosen, batch * 2**qubit, 2, -1)
            probs = (keep * pv + r * xp.flip(pv, (2,))).reshape(n_chosen, batch, dim)
    shots = _like([float(noise.shots[c]) for c in chosen], probs)
    shots = shots.repeat_interleave(batch) if xp is torch else np.repeat(shots, batch)
    counts = _sample_counts(probs.reshape(n_chosen * batch, dim), shots, generator, xp)
    signs = _like(_signs(q), probs)
    return (counts @ signs) / shots.reshape(-1, 1)
