"""Several federations' rounds in shared backend calls: the engine of batched (vectorized) environments.

One round of ``F`` federations costs one backend call per local step (every training client of every
federation x its minibatch along the leading dimension) and one evaluation call, instead of ``F`` of each.
Every federation keeps its own generator, data and state, so its round is the one it would run alone (bit for
bit: the simulators treat the leading dimension row by row).

Rows with finite shots draw from their federation's generator, so a federation with shot noise gets calls of
its own; rows are also grouped by minibatch size. Everything else shares one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from .backends.base import Backend, ClientNoise
from .circuits import CircuitSpec
from .clients import LocalTraining

T = TypeVar("T")


def call_groups(items: Sequence[T], noise: Callable[[T], ClientNoise], batch: Callable[[T], int]) -> list[list[T]]:
    """Partition ``items`` into those that can share one backend call (in order within each group).

    Items whose noise has finite shots stay alone (they draw from their own generator); the others are grouped
    by minibatch size.
    """
    groups: dict[object, list[T]] = {}
    for i, item in enumerate(items):
        key = ("alone", i) if noise(item).has_shots else ("shared", batch(item))
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def train_jointly(backend: Backend, trainings: Sequence[LocalTraining]) -> None:
    """Run every local training to its end, the trainings of one step sharing backend calls."""
    while active := [t for t in trainings if not t.done]:
        for group in call_groups(active, lambda t: t.noise, lambda t: t.pool.batch):
            batches = [t.next_batch() for t in group]
            if len(group) == 1:
                (t,), (batch,) = group, batches
                t.apply(batch, *backend.loss_and_grad(t.params, *batch, t.noise, t.generator))
                continue
            sizes = [len(t.client_ids) for t in group]
            x, y, mask = (torch.cat(parts) for parts in zip(*batches, strict=True))
            params = torch.cat([t.params for t in group])
            noise = ClientNoise.concat([t.noise for t in group])
            loss, grad = backend.loss_and_grad(params, x, y, mask, noise, group[0].generator)
            for t, batch, loss_t, grad_t in zip(group, batches, loss.split(sizes), grad.split(sizes), strict=True):
                t.apply(batch, loss_t, grad_t)


EvalInput = tuple[torch.Tensor, torch.Tensor, ClientNoise, torch.Generator]
"""``(params [R, P], x [R, B, Q], noise, generator)`` of one federation's evaluation call."""


def logits_jointly(spec: CircuitSpec, backend: Backend, inputs: Sequence[EvalInput]) -> list[torch.Tensor]:
    """The logits ``[R_i, B, K]`` of every input, the inputs sharing backend calls where they can."""
    out: list[torch.Tensor | None] = [None] * len(inputs)
    indexed = list(enumerate(inputs))
    with torch.no_grad():
        for group in call_groups(indexed, lambda item: item[1][2], lambda item: item[1][1].shape[1]):
            if len(group) == 1:  # one federation's call: its own tensors, no copies
                params, x, noise, _ = group[0][1]
            else:
                params = torch.cat([item[1][0] for item in group])
                x = torch.cat([item[1][1] for item in group])
                noise = ClientNoise.concat([item[1][2] for item in group])
            weights, readout = spec.split(params)
            logits = spec.logits(backend.expvals(weights, x, noise, group[0][1][3]), readout)
            for (i, _), part in zip(group, logits.split([len(item[1][0]) for item in group]), strict=True):
                out[i] = part
    return [logits for logits in out if logits is not None]
