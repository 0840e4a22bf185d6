"""Finite shots: exact multinomial outcome counts and straight-through shot estimates of ``<Z_q>``.

``S`` joint outcomes are drawn exactly from the (noisy) distribution over the ``2^Q`` basis states by a tree of
``Q`` conditional binomial draws (one vectorized ``torch.binomial`` per qubit, from the caller's generator), i.e.
one multinomial draw of the outcome counts; ``<Z_q>`` is the mean of the ``+-1`` outcomes, a multiple of
``2/S``. Readout bit flips ``r`` act on the distribution through the per-qubit confusion matrix before
sampling. The gradient is that of the exact expectation (straight-through estimator):
``z = z_sampled + (z_exact - z_exact.detach())``.
"""

from __future__ import annotations

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
        ``[C, B, Q]``: shot estimates where ``noise.shots`` is finite, ``z`` elsewhere; gradient that of ``z``.
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
        signs = torch.as_tensor(z_signs(q), dtype=probs.dtype, device=probs.device)
        sampled = (counts @ signs) / shots.unsqueeze(-1)
        values = z.detach().clone()
        values[chosen] = sampled.view(len(chosen), batch, q).to(values.device)
    return values + (z - z.detach())
