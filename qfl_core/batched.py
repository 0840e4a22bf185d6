"""Several federations' rounds in shared backend calls: the engine of batched (vectorized) environments.

One round of ``F`` federations costs one backend call per local step (every training client of every
federation x its minibatch along the leading dimension) and one evaluation call, instead of ``F`` of each.
Every federation keeps its own generator, data and state, so its round is the one it would run alone (bit for
bit: the simulators treat the leading dimension row by row).

Rows with finite shots draw from their federation's generator: a backend that takes
:class:`~qflgym.qfl_core.backends.base.GeneratorRuns` (the ``torch`` one) gets them in the shared call, each
federation's rows drawing from its own generator; with any other backend a federation with shot noise gets
calls of its own. Rows are also grouped by minibatch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from .backends.base import Backend, ClientNoise, GeneratorRuns, Generators
from .circuits import CircuitSpec
from .clients import Batch, LocalTraining

T = TypeVar("T")


def call_groups(
    items: Sequence[T], noise: Callable[[T], ClientNoise], batch: Callable[[T], int], share_shots: bool = False
) -> list[list[T]]:
    """Partition ``items`` into those that can share one backend call (in order within each group).

    Items are grouped by minibatch size; unless ``share_shots`` (the backend takes
    :class:`~qflgym.qfl_core.backends.base.GeneratorRuns`), those whose noise has finite shots stay alone (they
    draw from their own generator).
    """
    groups: dict[object, list[T]] = {}
    for i, item in enumerate(items):
        key = ("alone", i) if not share_shots and noise(item).has_shots else ("shared", batch(item))
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def train_jointly(backend: Backend, trainings: Sequence[LocalTraining]) -> None:
    """Run every local training to its end, the trainings of one step sharing backend calls."""
    while active := [t for t in trainings if not t.done]:
        for group in call_groups(active, lambda t: t.noise, lambda t: t.pool.batch, backend.shares_generators):
            batches = [t.next_batch() for t in group]
            pool = group[0].pool
            if len(group) == 1:
                (t,), (batch,) = group, batches
                t.apply(batch, *pool.loss_and_grad(t.params, batch, t.noise, t.generator))
                continue
            sizes = [len(t.client_ids) for t in group]
            params = torch.cat([t.params for t in group])
            noise = ClientNoise.concat([t.noise for t in group])
            generators = _runs(backend, sizes, [t.generator for t in group])
            loss, grad = pool.loss_and_grad(params, _concat(batches), noise, generators)
            for t, batch, loss_t, grad_t in zip(group, batches, loss.split(sizes), grad.split(sizes), strict=True):
                t.apply(batch, loss_t, grad_t)


def _concat(batches: Sequence[Batch]) -> Batch:
    """The minibatches of several trainings as one (prepared inputs only if every one has them)."""
    states = [b.states for b in batches]
    return Batch(
        torch.cat([b.x for b in batches]),
        torch.cat([b.y for b in batches]),
        torch.cat([b.mask for b in batches]),
        None if any(s is None for s in states) else torch.cat(states),
    )


def _runs(backend: Backend, sizes: Sequence[int], generators: Sequence[torch.Generator]) -> Generators:
    """The generators of a shared call: per-federation runs, or the first one (all rows share it, or no row draws)."""
    if not backend.shares_generators or all(g is generators[0] for g in generators):
        return generators[0]
    return GeneratorRuns(tuple(sizes), tuple(generators))


EvalInput = tuple[torch.Tensor, torch.Tensor, ClientNoise, torch.Generator, torch.Tensor | None]
"""``(params [R, P], x [R, B, Q], noise, generator, states)`` of one federation's evaluation call (``states``:
the backend's prepared inputs of ``x``, see :meth:`~qflgym.qfl_core.backends.base.Backend.embed_inputs`)."""


def logits_jointly(spec: CircuitSpec, backend: Backend, inputs: Sequence[EvalInput]) -> list[torch.Tensor]:
    """The logits ``[R_i, B, K]`` of every input, the inputs sharing backend calls where they can."""
    out: list[torch.Tensor | None] = [None] * len(inputs)
    indexed = list(enumerate(inputs))
    with torch.no_grad():
        share = backend.shares_generators
        for group in call_groups(indexed, lambda item: item[1][2], lambda item: item[1][1].shape[1], share):
            if len(group) == 1:  # one federation's call: its own tensors, no copies
                params, x, noise, generators, states = group[0][1]
            else:
                params = torch.cat([item[1][0] for item in group])
                x = torch.cat([item[1][1] for item in group])
                noise = ClientNoise.concat([item[1][2] for item in group])
                generators = _runs(backend, [len(item[1][0]) for item in group], [item[1][3] for item in group])
                parts = [item[1][4] for item in group]
                states = None if any(part is None for part in parts) else torch.cat(parts)
            weights, readout = spec.split(params)
            extra = {} if states is None else {"states": states}
            logits = spec.logits(backend.expvals(weights, x, noise, generators, **extra), readout)
            for (i, _), part in zip(group, logits.split([len(item[1][0]) for item in group]), strict=True):
                out[i] = part
    return [logits for logits in out if logits is not None]
