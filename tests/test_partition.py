"""Partition schemes: exact cover, min_samples repair, reproducibility, skew ordering, statistics."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from qflgym.config import ConfigError, build_config
from qflgym.qfl_core.config import PartitionConfig
from qflgym.qfl_core.partition import (
    PARTITIONS,
    ClientDataStats,
    client_statistics,
    mean_skew,
    partition,
)

SCHEMES = ("iid", "dirichlet", "shards", "quantity_skew")


def balanced_labels(n_classes: int = 10, per_class: int = 120) -> np.ndarray:
    return np.repeat(np.arange(n_classes), per_class)


def uneven_labels(n: int = 700, n_classes: int = 7, seed: int = 123) -> np.ndarray:
    """Shuffled labels with very unequal class sizes (class k has weight k + 1)."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, n_classes + 1, dtype=float)
    return rng.choice(n_classes, size=n, p=weights / weights.sum())


def mean_skew_over_seeds(scheme: str, alpha: float, seeds: range = range(5)) -> float:
    labels = balanced_labels()
    config = PartitionConfig(scheme=scheme, alpha=alpha, min_samples=4)
    values = [
        mean_skew(client_statistics(labels, partition(labels, 10, config, np.random.default_rng(s)), 10)) for s in seeds
    ]
    return float(np.mean(values))


def test_builtin_schemes_registered():
    assert set(SCHEMES) <= set(PARTITIONS.names())


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n_clients", [1, 3, 10, 37])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_sample_on_exactly_one_client_and_min_samples(scheme, n_clients, seed):
    labels = uneven_labels()
    config = PartitionConfig(scheme=scheme, alpha=0.1, shards_per_client=2, min_samples=5)
    parts = partition(labels, n_clients, config, np.random.default_rng(seed))

    assert len(parts) == n_clients
    flat = np.concatenate(parts)
    assert len(flat) == len(labels)
    np.testing.assert_array_equal(np.sort(flat), np.arange(len(labels)))
    for part in parts:
        assert part.dtype == np.int64
        assert len(part) >= config.min_samples
        assert np.all(np.diff(part) > 0), "each client's indices are sorted and unique"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tight_min_samples_gives_everyone_exactly_the_minimum(scheme):
    labels = uneven_labels(n=60)
    config = PartitionConfig(scheme=scheme, alpha=0.05, min_samples=6)
    parts = partition(labels, 10, config, np.random.default_rng(0))
    assert [len(p) for p in parts] == [6] * 10
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(60))


def test_too_few_samples_for_min_samples_names_the_fields():
    config = PartitionConfig(scheme="iid", min_samples=4)
    with pytest.raises(ConfigError) as err:
        partition(np.zeros(30, dtype=int), 10, config, np.random.default_rng(0))
    message = str(err.value)
    assert "partition.min_samples" in message
    assert "clients.n_clients" in message
    assert "30" in message


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_min_samples_repair_only_moves_samples_from_large_clients(seed):
    labels = balanced_labels()
    config = PartitionConfig(scheme="dirichlet", alpha=0.02, min_samples=40)
    raw = PARTITIONS.get("dirichlet")(labels, 10, config, np.random.default_rng(seed))
    fixed = partition(labels, 10, config, np.random.default_rng(seed))
    raw_sizes = np.array([len(p) for p in raw])
    assert raw_sizes.min() < config.min_samples, "the test needs a raw partition that violates min_samples"

    for before, after in zip(raw, fixed, strict=True):
        before_set, after_set = set(before.tolist()), set(after.tolist())
        if len(before) < config.min_samples:
            # topped up to exactly the minimum, keeping everything it had
            assert len(after) == config.min_samples
            assert before_set <= after_set
        else:
            # donors only lose samples and never drop below the minimum
            assert after_set <= before_set
            assert len(after) >= config.min_samples
    assert sum(len(p) for p in fixed) == len(labels)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_partition_different_seed_different(scheme):
    labels = uneven_labels()
    config = PartitionConfig(scheme=scheme, alpha=0.5, min_samples=2)
    a = partition(labels, 8, config, np.random.default_rng(7))
    b = partition(labels, 8, config, np.random.default_rng(7))
    c = partition(labels, 8, config, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_small_alpha_is_much_more_skewed_than_large_alpha_and_iid():
    # measured (10 classes x 120, 10 clients, seeds 0-4): alpha=0.05 ~0.75, alpha=100 ~0.035, iid ~0.10
    skewed = mean_skew_over_seeds("dirichlet", 0.05)
    mild = mean_skew_over_seeds("dirichlet", 100.0)
    iid = mean_skew_over_seeds("iid", 1.0)
    assert skewed > 0.6
    assert mild < 0.1
    assert iid < 0.2
    assert skewed - max(mild, iid) > 0.4
    assert mean_skew_over_seeds("dirichlet", 0.5) > iid  # ~0.41: monotone in between


@pytest.mark.parametrize("shards_per_client", [1, 2, 3])
def test_shards_give_few_classes_per_client(shards_per_client):
    # 10 equal classes cut into 10 * spc equal shards: no shard straddles a class boundary
    labels = balanced_labels(per_class=60)
    config = PartitionConfig(scheme="shards", shards_per_client=shards_per_client, min_samples=1)
    parts = partition(labels, 10, config, np.random.default_rng(0))
    classes = [len(np.unique(labels[p])) for p in parts]
    assert max(classes) <= shards_per_client
    assert [len(p) for p in parts] == [60] * 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shards_on_uneven_classes_stay_within_the_boundary_bound(seed):
    labels = uneven_labels()
    config = PartitionConfig(scheme="shards", shards_per_client=2, min_samples=1)
    parts = partition(labels, 10, config, np.random.default_rng(seed))
    classes = np.array([len(np.unique(labels[p])) for p in parts])
    assert classes.max() <= 2 * config.shards_per_client  # each shard straddles at most one class boundary
    assert classes.mean() <= config.shards_per_client + 1.5
    stats = client_statistics(labels, parts, 7)
    assert mean_skew(stats) > 0.5  # pathological label skew (measured ~0.6)


def test_quantity_skew_sizes_vary_much_more_than_iid():
    labels = balanced_labels()
    iid_config = PartitionConfig(scheme="iid", min_samples=4)
    qs_config = PartitionConfig(scheme="quantity_skew", alpha=0.5, min_samples=4)
    for seed in range(3):
        iid_sizes = [len(p) for p in partition(labels, 10, iid_config, np.random.default_rng(seed))]
        qs_parts = partition(labels, 10, qs_config, np.random.default_rng(seed))
        qs_sizes = [len(p) for p in qs_parts]
        assert max(iid_sizes) - min(iid_sizes) <= 1
        assert np.std(qs_sizes) > 50.0  # measured 83-237 for seeds 0-4
        # labels stay IID: the big clients look like the global distribution
        stats = client_statistics(labels, qs_parts, 10)
        assert mean_skew(stats, weighted=True) < 0.2


def test_client_statistics_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 1])  # global distribution (1/3, 2/3)
    stats = client_statistics(labels, [np.array([0, 1]), np.array([2, 3, 4, 5]), np.array([0, 2, 3])], 3)
    assert [s.size for s in stats] == [2, 4, 3]
    np.testing.assert_array_equal(stats[0].label_histogram, [2, 0, 0])
    np.testing.assert_array_equal(stats[1].label_histogram, [0, 4, 0])
    assert stats[0].skew == pytest.approx(2 / 3)
    assert stats[1].skew == pytest.approx(1 / 3)
    assert stats[2].skew == pytest.approx(0.0)
    assert isinstance(stats[0], ClientDataStats)
    with pytest.raises(ValueError):
        stats[0].label_histogram[0] = 5  # read-only
    assert mean_skew(stats) == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert mean_skew(stats, weighted=True) == pytest.approx((2 * 2 / 3 + 4 * 1 / 3) / 9)


def test_client_statistics_skew_is_a_distance_in_unit_interval():
    labels = uneven_labels()
    config = PartitionConfig(scheme="dirichlet", alpha=0.05, min_samples=1)
    parts = partition(labels, 12, config, np.random.default_rng(3))
    stats = client_statistics(labels, parts, 7)
    assert all(0.0 <= s.skew <= 1.0 for s in stats)
    assert sum(s.size for s in stats) == len(labels)
    np.testing.assert_array_equal(sum(s.label_histogram for s in stats), np.bincount(labels, minlength=7))
    whole = client_statistics(labels, [np.arange(len(labels))], 7)[0]
    assert whole.skew == pytest.approx(0.0)


def test_empty_client_statistics():
    stats = client_statistics(np.array([0, 1]), [np.array([], dtype=int), np.array([0, 1])], 2)
    assert stats[0].size == 0 and np.isnan(stats[0].skew)
    assert mean_skew(stats) == pytest.approx(0.0)  # empty clients are left out


def test_unknown_scheme_is_a_config_error_naming_field_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        build_config(PartitionConfig, {"scheme": "pathological"}, "partition")
    message = str(err.value)
    assert "scheme" in message and "pathological" in message
    assert "dirichlet, iid, quantity_skew, shards" in message

    with pytest.raises(pydantic.ValidationError, match="allowed: dirichlet, iid, quantity_skew, shards"):
        PartitionConfig.model_validate({"scheme": "pathological"})
