"""The training loss of a client batch: readout logits, masked cross-entropy, and its closed-form gradient.

:func:`masked_cross_entropy` is the loss every client minimizes; :func:`readout_cross_entropy` computes it from
Pauli-Z expectations together with its gradients with respect to the expectations and the readout parameters,
in closed form (``softmax - onehot``), so a simulator with a hand-written backward can skip autograd entirely. It
runs the operations autograd runs through :func:`masked_cross_entropy` (log-softmax's own backward kernel
included), so both give the same bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .circuits import CircuitSpec


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per row over its unmasked samples: logits ``[R, B, K]``, y and mask ``[R, B]`` -> ``[R]``."""
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    return (ce * mask).sum(1) / mask.sum(1)


def readout_cross_entropy(
    spec: CircuitSpec, z: torch.Tensor, readout: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradients of :func:`masked_cross_entropy` of ``spec.logits(z, readout)``, without autograd.

    Args:
        spec: The circuit (its readout kind and sizes).
        z: ``[C, B, Q]`` expectations.
        readout: ``[C, R]`` readout parameters.
        y: ``[C, B]`` labels.
        mask: ``[C, B]`` 1 for real samples, 0 for padding.

    Returns:
        ``loss [C]``, ``dloss/dz [C, B, Q]`` (zero for the qubits that are not read out) and
        ``dloss/dreadout [C, R]`` (of each row's own loss).
    """
    full_z, z = z, z[..., : spec.n_readout]
    with torch.no_grad():
        if spec.readout == "linear":
            q, k = spec.n_readout, spec.n_classes
            w = readout[:, : q * k].view(-1, q, k)
            logits = torch.baddbmm(readout[:, q * k :].unsqueeze(1), z, w)
        else:
            w = spec.grouping_matrix(z.dtype).to(z.device)
            w = w.expand(len(z), *w.shape)  # one product per row (see backends.linalg.rowwise_matmul)
            logits = torch.bmm(z, w)
        # The operations autograd runs through masked_cross_entropy, so both give the same bits: loss =
        # sum(ce * mask) / sum(mask), d loss / d ce = (1 / sum(mask)) * mask, then log-softmax's own backward
        # kernel on the one-hot cotangent (softmax - onehot, up to its rounding).
        log_p = torch.log_softmax(logits, -1)
        count = mask.sum(1)
        picked = log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        loss = (-picked * mask).sum(1) / count
        weight = (1.0 / count).unsqueeze(1) * mask
        grad_log_p = torch.zeros_like(log_p).scatter_(-1, y.unsqueeze(-1), -weight.unsqueeze(-1))
        grad_logits = torch.ops.aten._log_softmax_backward_data(grad_log_p, log_p, -1, log_p.dtype)
        grad_z = torch.bmm(grad_logits, w.mT)
        if z.shape[-1] != full_z.shape[-1]:  # qubits that are not read out get a zero cotangent
            grad_z = torch.cat((grad_z, grad_z.new_zeros(*grad_z.shape[:-1], full_z.shape[-1] - z.shape[-1])), -1)
        if spec.readout == "linear":
            grad_readout = torch.cat((torch.bmm(z.mT, grad_logits).flatten(1), grad_logits.sum(1)), 1)
        else:
            grad_readout = readout.new_zeros(readout.shape)
    return loss, grad_z, grad_readout
