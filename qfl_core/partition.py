"""Distributing the training split over clients, and measuring how skewed each client's data is.

A partition scheme is registered in :data:`PARTITIONS` with one shape::

    scheme(labels: np.ndarray [n], n_clients: int, config: PartitionConfig, rng) -> list[np.ndarray]

returning one array of indices into the training split per client. Built in:

* ``iid``: shuffle and split evenly.
* ``dirichlet``: label skew; for every class, the shares of the clients are drawn from
  ``Dirichlet(alpha * 1_N)`` (Hsu et al. 2019, "Measuring the effects of non-identical data distribution";
  the per-class form used by Yurochkin et al. 2019 and NIID-Bench). Small ``alpha`` gives each client few
  classes.
* ``shards``: pathological label skew (McMahan et al. 2017): sort by label, cut into
  ``n_clients * shards_per_client`` equal shards, deal ``shards_per_client`` random shards to each client.
* ``quantity_skew``: client sizes proportional to ``Dirichlet(alpha * 1_N)``, labels IID.

:func:`partition` dispatches to a scheme, then guarantees ``config.min_samples`` per client (moving samples
one at a time from the currently largest client, never dropping any), checks that every training index lands
on exactly one client and sorts each client's indices.

:func:`client_statistics` summarises each client by size, label histogram and skew (the total-variation
distance between its label distribution and the global training label distribution).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qflgym.config import ConfigError
from qflgym.qfl_core.config import PartitionConfig
from qflgym.registry import Registry

#: ``scheme(labels, n_clients, config, rng) -> [indices of client 0, ..., indices of client N-1]``.
PartitionScheme = Callable[[np.ndarray, int, PartitionConfig, np.random.Generator], list[np.ndarray]]

#: Registered partition schemes; installed packages may add more via ``qflgym.partitions`` entry points.
PARTITIONS: Registry[PartitionScheme] = Registry("partition scheme", entry_point_group="qflgym.partitions")


def _split_by_proportions(indices: np.ndarray, proportions: np.ndarray) -> list[np.ndarray]:
    """Cut ``indices`` into consecutive pieces whose sizes follow ``proportions`` (which sum to 1)."""
    cuts = np.floor(np.cumsum(proportions)[:-1] * len(indices)).astype(np.int64)
    return np.split(indices, np.clip(cuts, 0, len(indices)))


@PARTITIONS.register("iid")
def iid(labels: np.ndarray, n_clients: int, config: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle all samples and split them into ``n_clients`` parts whose sizes differ by at most one."""
    del config
    return list(np.array_split(rng.permutation(len(labels)), n_clients))


@PARTITIONS.register("dirichlet")
def dirichlet(
    labels: np.ndarray, n_clients: int, config: PartitionConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew: split every class over the clients with shares drawn from ``Dirichlet(config.alpha)``."""
    parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(n_clients, config.alpha))
        for client, piece in enumerate(_split_by_proportions(members, shares)):
            parts[client].append(piece)
    return [np.concatenate(pieces) for pieces in parts]


@PARTITIONS.register("shards")
def shards(labels: np.ndarray, n_clients: int, config: PartitionConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological label skew: each client gets ``config.shards_per_client`` shards of label-sorted samples.

    A shard may straddle a class boundary, so a client sees at most ``2 * shards_per_client`` classes and
    typically about ``shards_per_client``.
    """
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(by_label, n_clients * config.shards_per_client)
    dealt = rng.permutation(len(pieces)).reshape(n_clients, config.shards_per_client)
    return [np.concatenate([pieces[s] for s in row]) for row in dealt]


@PARTITIONS.register("quantity_skew")
def quantity_skew(
    labels: np.ndarray, n_clients: int, config: PartitionConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Size skew: client sizes proportional to a ``Dirichlet(config.alpha)`` draw, labels IID per client."""
    shares = rng.dirichlet(np.full(n_clients, config.alpha))
    return _split_by_proportions(rng.permutation(len(labels)), shares)


def partition(
    labels: np.ndarray, n_clients: int, config: PartitionConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Distribute the training samples over ``n_clients`` clients with the configured scheme.

    Args:
        labels: Training labels ``[n]`` (ints in ``0..K-1``).
        n_clients: Number of clients ``N``.
        config: The partition configuration (scheme, alpha, shards_per_client, min_samples).
        rng: The federation's structural random generator.

    Returns:
        ``N`` sorted int64 index arrays into ``labels``; together they hold every index exactly once and each
        holds at least ``config.min_samples``.

    Raises:
        ConfigError: If ``n < n_clients * config.min_samples``.
        RuntimeError: If a scheme's output is not a partition of ``range(n)`` into ``N`` parts.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if n_clients < 1:
        raise ConfigError(f"clients.n_clients must be >= 1, got {n_clients}")
    n = len(labels)
    if n < n_clients * config.min_samples:
        raise ConfigError(
            f"partition.min_samples={config.min_samples} x clients.n_clients={n_clients} = "
            f"{n_clients * config.min_samples} exceeds the {n} training samples; lower "
            f"partition.min_samples or clients.n_clients, or use more data"
        )
    parts = PARTITIONS.get(config.scheme)(labels, n_clients, config, rng)
    parts = [np.asarray(p, dtype=np.int64).ravel() for p in parts]
    if len(parts) != n_clients:
        raise RuntimeError(f"partition scheme {config.scheme!r} returned {len(parts)} parts for {n_clients} clients")
    _check_exact_cover(parts, n, config.scheme)
    parts = _enforce_min_samples(parts, config.min_samples, rng)
    _check_exact_cover(parts, n, config.scheme)
    return [np.sort(p) for p in parts]


def _check_exact_cover(parts: Sequence[np.ndarray], n: int, scheme: str) -> None:
    """Raise unless ``parts`` hold every index of ``range(n)`` exactly once."""
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    in_range = flat.size == 0 or (flat.min() >= 0 and flat.max() < n)
    if len(flat) != n or not in_range or not np.all(np.bincount(flat, minlength=n) == 1):
        raise RuntimeError(f"partition scheme {scheme!r} did not assign each of the {n} samples to exactly one client")


def _enforce_min_samples(parts: list[np.ndarray], min_samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Top up clients below ``min_samples`` with random samples taken one at a time from the largest client.

    Taking from whichever client is currently largest spreads the cost over the big clients and never pushes a
    donor below ``min_samples`` (the caller guarantees ``n >= N * min_samples``).
    """
    sizes = np.array([len(p) for p in parts])
    if sizes.min() >= min_samples:
        return parts
    pools = [list(rng.permutation(p)) for p in parts]
    for client in np.argsort(sizes, kind="stable"):
        while len(pools[client]) < min_samples:
            donor = int(np.argmax([len(pool) for pool in pools]))
            pools[client].append(pools[donor].pop())
    return [np.asarray(pool, dtype=np.int64) for pool in pools]


@dataclass(frozen=True, eq=False)
class ClientDataStats:
    """What one client's training data looks like.

    Attributes:
        size: Number of training samples.
        label_histogram: Read-only counts per class ``[K]`` (int64).
        skew: Total-variation distance between the client's label distribution and the global training label
            distribution, in ``[0, 1]`` (0 = identical; NaN for a client without samples).
    """

    size: int
    label_histogram: np.ndarray
    skew: float


def client_statistics(labels: np.ndarray, parts: Sequence[np.ndarray], n_classes: int) -> list[ClientDataStats]:
    """Summarise each client's share of the training data.

    Args:
        labels: Training labels ``[n]`` in ``0..n_classes-1``.
        parts: Index arrays, one per client (as returned by :func:`partition`).
        n_classes: Number of classes ``K``.

    Returns:
        One :class:`ClientDataStats` per client, in client order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    overall = np.bincount(labels, minlength=n_classes).astype(np.float64)
    overall /= max(overall.sum(), 1.0)
    stats = []
    for part in parts:
        histogram = np.bincount(labels[np.asarray(part, dtype=np.int64)], minlength=n_classes).astype(np.int64)
        histogram.setflags(write=False)
        size = int(histogram.sum())
        skew = 0.5 * float(np.abs(histogram / size - overall).sum()) if size else float("nan")
        stats.append(ClientDataStats(size=size, label_histogram=histogram, skew=min(skew, 1.0)))
    return stats


def mean_skew(stats: Sequence[ClientDataStats], *, weighted: bool = False) -> float:
    """Average skew over clients with data (optionally weighted by client size); NaN if none have data.

    Args:
        stats: Per-client statistics from :func:`client_statistics`.
        weighted: Weight each client by its number of samples instead of equally.
    """
    present = [s for s in stats if s.size > 0]
    if not present:
        return float("nan")
    skews = np.array([s.skew for s in present])
    weights = np.array([s.size for s in present], dtype=np.float64) if weighted else None
    return float(np.average(skews, weights=weights))
