"""Finite shots: exact multinomial outcome counts and straight-through shot estimates of ``<Z_q>``.

``S`` joint outcomes are drawn exactly from the (noisy) distribution over the ``2^Q`` basis states by a tree of
``Q`` conditional binomial draws (one vectorized ``torch.binomial`` per qubit, from the caller's generator), i.e.
one multinomial draw of the outcome counts; ``<Z_q>`` is the mean of the ``+-1`` outcomes, a multiple of
``2/S``. Readout bit flips ``r`` act on the distribution through the per-qubit confusion matrix before
sampling. The gradient is that of the exact expectation (straight-through estimator):
``z = z_sampled + (z_exact - z_exact.detach())``.

The arithmetic around the draws runs in NumPy: at these sizes (a few thousand numbers) a NumPy operation costs a
fraction of a torch one. The draws are ``torch.binomial`` calls on the same memory (from the caller's generator),
and the arithmetic is the same elementwise IEEE operations in the same order as a torch implementation (the pair
sums of the tree are ``a + b``), so the counts are those torch would draw, bit for bit.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from qflgym.qfl_core.backends.base import ClientNoise, GeneratorRuns, Generators
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
        ``[N, 2^Q]`` counts (floating point, integral values, on the CPU) summing to ``shots`` per row.
    """
    return torch.from_numpy(_sample_counts(_numpy(probs), _numpy(shots), [(len(probs), generator)]))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _binomial(counts: np.ndarray, p_one: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """``torch.binomial`` from ``generator`` on the memory of two arrays (on the generator's device)."""
    device = generator.device
    if device.type == "cpu":
        return torch.binomial(torch.from_numpy(counts), torch.from_numpy(p_one), generator=generator).numpy()
    draws = torch.binomial(torch.from_numpy(counts).to(device), torch.from_numpy(p_one).to(device), generator=generator)
    return _numpy(draws)


def _binomial_runs(counts: np.ndarray, p_one: np.ndarray, runs: list[tuple[int, torch.Generator]]) -> np.ndarray:
    """:func:`_binomial` of consecutive row runs, each ``(rows, generator)`` from its own generator, in order."""
    if len(runs) == 1:
        return _binomial(counts, np.ascontiguousarray(p_one), runs[0][1])
    ones = np.empty(p_one.shape, dtype=p_one.dtype)
    start = 0
    for rows, generator in runs:
        stop = start + rows
        ones[start:stop] = _binomial(counts[start:stop], np.ascontiguousarray(p_one[start:stop]), generator)
        start = stop
    return ones


def _sample_counts(probs: np.ndarray, shots: np.ndarray, runs: list[tuple[int, torch.Generator]]) -> np.ndarray:
    """:func:`sample_counts` on arrays: ``[N, 2^Q]`` counts of the same dtype as ``probs``.

    ``runs`` splits the ``N`` rows into consecutive ``(rows, generator)`` runs, each drawn from its generator.
    """
    return _sample_counts_t(np.ascontiguousarray(probs.T), shots, runs)


def _sample_counts_t(probs_t: np.ndarray, shots: np.ndarray, runs: list[tuple[int, torch.Generator]]) -> np.ndarray:
    """:func:`_sample_counts` of the transposed probabilities ``[2^Q, N]`` (the rows innermost: long loops)."""
    dim, n = probs_t.shape
    n_qubits = dim.bit_length() - 1
    # the marginals as a tree: level k (the distribution of the first k bits) in rows [2^k - 1, 2^(k+1) - 1)
    tree = np.empty((2 * dim - 1, n), dtype=probs_t.dtype)
    np.maximum(probs_t, 0.0, out=tree[dim - 1 :])
    for k in reversed(range(n_qubits)):  # pair sums a + b: the distribution of one bit fewer
        finer = tree[2 ** (k + 1) - 1 : 2 ** (k + 2) - 1]
        np.add(finer[0::2], finer[1::2], out=tree[2**k - 1 : 2 ** (k + 1) - 1])
    # p(next bit = 1 | prefix) of every level at once: [1 + 2 + ... + 2^(Q-1), N]; the ones' masses (the odd
    # entries of levels 1..Q) are the even rows from 2 on
    total, ones_mass = tree[: dim - 1], tree[2::2]
    p_one = np.where(total > 0, ones_mass / np.maximum(total, np.finfo(probs_t.dtype).tiny), 0.0)
    p_one = np.minimum(p_one, 1.0).astype(probs_t.dtype, copy=False)  # in [0, 1] already (monotone rounding)
    counts = np.ascontiguousarray(shots, dtype=probs_t.dtype).reshape(n, 1)
    for k in range(n_qubits):
        ones = _binomial_runs(counts, p_one[2**k - 1 : 2 ** (k + 1) - 1].T, runs)
        split = np.empty((n, 2**k, 2), dtype=probs_t.dtype)
        np.subtract(counts, ones, out=split[..., 0])
        split[..., 1] = ones
        counts = split.reshape(n, 2 ** (k + 1))
    return counts


@functools.cache
def _signs(n_qubits: int) -> np.ndarray:
    return z_signs(n_qubits)


def shot_estimates(z: torch.Tensor, probs: torch.Tensor, noise: ClientNoise, generator: Generators) -> torch.Tensor:
    """Replace the values of clients with finite shots by shot estimates (straight-through gradient).

    Args:
        z: ``[C, B, Q]`` exact expectations (after readout noise), possibly with a gradient.
        probs: ``[C, B, 2^Q]`` outcome probabilities in the true basis (before readout noise).
        noise: The clients' shots and readout errors.
        generator: The source of the draws (on its device), or :class:`GeneratorRuns` over the clients.

    Returns:
        ``[C, B, Q]``: shot estimates where ``noise.shots`` is finite, ``z`` elsewhere; gradient that of ``z``
        (a tensor without gradient when ``z`` has none).
    """
    chosen = [c for c, s in enumerate(noise.shots) if s is not None]
    n_clients, batch, q = z.shape
    # the rows with shots, as a slice when they come first (the common case: the trained clients' rows)
    rows: slice | list[int] = slice(0, len(chosen)) if chosen == list(range(len(chosen))) else chosen
    with torch.no_grad():
        sampled = _shot_means(_numpy(probs[rows]), noise, chosen, _chosen_runs(generator, chosen, n_clients))
        sampled = torch.from_numpy(sampled.reshape(len(chosen), batch, q)).to(z.device)
        if len(chosen) < n_clients:
            values = z.detach().clone()
            values[rows] = sampled
        else:
            values = sampled
    if not z.requires_grad:
        return values
    return values + (z - z.detach())


def _chosen_runs(generator: Generators, chosen: list[int], n_clients: int) -> list[tuple[int, torch.Generator]]:
    """``(clients, generator)`` runs over the ``chosen`` clients (ascending) of a call over ``n_clients``."""
    runs = GeneratorRuns.of(generator, n_clients)
    out, start, index = [], 0, 0
    for size, gen in zip(runs.sizes, runs.generators, strict=True):
        stop, begin = start + size, index
        while index < len(chosen) and chosen[index] < stop:
            index += 1
        if index > begin:
            out.append((index - begin, gen))
        start = stop
    if start != n_clients:
        raise ValueError(f"generator: the runs cover {start} clients, the call has {n_clients}")
    return out


def _shot_means(
    probs: np.ndarray, noise: ClientNoise, chosen: list[int], runs: list[tuple[int, torch.Generator]]
) -> np.ndarray:
    """``[C' B, Q]`` shot means of the clients ``chosen`` from their true-basis ``probs [C', B, D]``.

    ``runs`` are consecutive ``(clients, generator)`` runs over the chosen clients.
    """
    n_chosen, batch, dim = probs.shape
    q = dim.bit_length() - 1
    probs_t = np.ascontiguousarray(probs.reshape(n_chosen * batch, dim).T)  # [D, C' B]
    flips = [noise.readout_error[c] for c in chosen]
    if any(flips):  # per-qubit confusion, qubit by qubit: p(b) -> (1 - r) p(b) + r p(b with bit q flipped)
        r = np.repeat(np.array(flips, dtype=probs.dtype), batch)
        keep = np.repeat(1 - np.array(flips, dtype=probs.dtype), batch)
        for qubit in range(q):  # bit q flipped: the reversed axis of [2^q, 2, 2^(Q-1-q), C' B] (a view)
            split = probs_t.reshape(2**qubit, 2, -1, n_chosen * batch)
            probs_t = (keep * split + r * split[:, ::-1]).reshape(dim, -1)
    shots = np.repeat(np.array([float(noise.shots[c]) for c in chosen], dtype=probs.dtype), batch)
    counts = _sample_counts_t(probs_t, shots, [(n * batch, g) for n, g in runs])
    return (counts @ _signs(q).astype(probs.dtype, copy=False)) / shots[:, None]
