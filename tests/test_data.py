"""Datasets and splits: loaders, stratified disjoint splits, train-only preprocessing, config errors."""

from __future__ import annotations

import socket

import numpy as np
import pydantic
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from qflgym.config import ConfigError, build_config
from qflgym.qfl_core.config import DataConfig
from qflgym.qfl_core.data import DATASETS, DataSplits, load_splits

#: name -> (raw dimension, number of classes)
EXPECTED = {
    "digits": (64, 10),
    "iris": (4, 3),
    "wine": (13, 3),
    "breast_cancer": (30, 2),
    "classification": (16, 4),
    "moons": (2, 2),
}


def raw(config: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The loader's output for the rng state ``load_splits`` starts from."""
    return DATASETS.get(config.dataset)(config, np.random.default_rng(seed))


def test_builtin_datasets_registered():
    assert set(EXPECTED) <= set(DATASETS.names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loaders_return_float_features_and_int_labels(name):
    x, y = raw(DataConfig(dataset=name, n_samples=200), 0)
    dim, n_classes = EXPECTED[name]
    assert x.ndim == 2 and x.shape[1] == dim and len(x) == len(y)
    assert np.issubdtype(np.asarray(x).dtype, np.floating)
    assert np.issubdtype(np.asarray(y).dtype, np.integer)
    assert len(np.unique(y)) == n_classes


def test_no_loader_touches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in EXPECTED:
        load_splits(DataConfig(dataset=name, n_samples=100), 2, np.random.default_rng(0))


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("n_features", [4, 8])
def test_splits_shapes_dtypes_and_angles(name, n_features):
    dim, n_classes = EXPECTED[name]
    config = DataConfig(dataset=name, n_samples=300, angle_scale=2.5)
    if n_features > dim:
        with pytest.raises(ConfigError, match=rf"circuit\.n_qubits={n_features}.*\({dim} features\)"):
            load_splits(config, n_features, np.random.default_rng(0))
        return
    splits = load_splits(config, n_features, np.random.default_rng(0))
    assert isinstance(splits, DataSplits)
    assert splits.n_classes == n_classes and splits.n_features == n_features
    pairs = [(splits.x_train, splits.y_train), (splits.x_val, splits.y_val), (splits.x_test, splits.y_test)]
    for x, y in pairs:
        assert x.dtype == np.float64 and y.dtype == np.int64
        assert x.shape == (len(y), n_features)
        assert y.min() >= 0 and y.max() < n_classes
        assert np.all(np.isfinite(x))
    # fitted on train: every training feature spans exactly [0, angle_scale]
    np.testing.assert_allclose(splits.x_train.min(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(splits.x_train.max(axis=0), 2.5, rtol=1e-12)
    assert set(np.unique(splits.y_train)) == set(range(n_classes))
    assert 0.0 < splits.explained_variance <= 1.0 + 1e-9


def test_moons_works_with_two_features():
    splits = load_splits(DataConfig(dataset="moons", n_samples=200), 2, np.random.default_rng(0))
    assert splits.x_train.shape[1] == 2 and splits.n_classes == 2


@pytest.mark.parametrize(("val_fraction", "test_fraction"), [(0.15, 0.15), (0.2, 0.1), (0.3, 0.45)])
def test_split_fractions_and_stratification(val_fraction, test_fraction):
    config = DataConfig(dataset="digits", val_fraction=val_fraction, test_fraction=test_fraction)
    splits = load_splits(config, 4, np.random.default_rng(1))
    n = 1797
    n_train, n_val, n_test = splits.sizes
    assert n_val == round(n * val_fraction) and n_test == round(n * test_fraction)
    assert n_train + n_val + n_test == n

    _, y_raw = raw(config, 1)
    class_sizes = np.bincount(y_raw)
    # train: floor or ceil of its share per class (slack 1); val/test come from the remainder (slack 2)
    checks = [(splits.y_train, n_train, 1), (splits.y_val, n_val, 2), (splits.y_test, n_test, 2)]
    for y, size, slack in checks:
        counts = np.bincount(y, minlength=10)
        np.testing.assert_array_less(np.abs(counts - class_sizes * size / n), slack + 1e-9)


def test_splits_are_disjoint_and_labels_match_the_loader():
    config = DataConfig(dataset="wine")
    splits = load_splits(config, 4, np.random.default_rng(5))
    _, y_raw = raw(config, 5)
    train, val, test = splits.train_index, splits.val_index, splits.test_index
    everything = np.concatenate([train, val, test])
    assert len(np.unique(everything)) == len(everything) == len(y_raw)  # disjoint and complete
    np.testing.assert_array_equal(y_raw[train], splits.y_train)  # wine labels are already 0..2
    np.testing.assert_array_equal(y_raw[test], splits.y_test)


def test_preprocessing_is_fitted_on_train_only():
    config = DataConfig(dataset="breast_cancer")
    splits = load_splits(config, 4, np.random.default_rng(2))
    x_raw, _ = raw(config, 2)

    def pipeline(fit_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scaler = StandardScaler().fit(x_raw[fit_rows])
        pca = PCA(n_components=4, svd_solver="full").fit(scaler.transform(x_raw[fit_rows]))
        z_fit = pca.transform(scaler.transform(x_raw[fit_rows]))
        low, high = z_fit.min(axis=0), z_fit.max(axis=0)

        def angles(rows: np.ndarray) -> np.ndarray:
            return (pca.transform(scaler.transform(x_raw[rows])) - low) / (high - low) * config.angle_scale

        return angles(splits.train_index), angles(splits.test_index)

    train_fit = pipeline(splits.train_index)
    np.testing.assert_allclose(splits.x_train, train_fit[0], atol=1e-9)
    np.testing.assert_allclose(splits.x_test, train_fit[1], atol=1e-9)
    # fitting on all samples would give different angles: the held-out data did not leak into the fit
    all_rows = np.arange(len(x_raw))
    assert not np.allclose(splits.x_test, pipeline(all_rows)[1], atol=1e-3)


def test_held_out_angles_are_not_clipped():
    splits = load_splits(DataConfig(dataset="digits"), 4, np.random.default_rng(0))
    held_out = np.concatenate([splits.x_val, splits.x_test])
    assert held_out.min() < 0.0 or held_out.max() > np.pi


def test_classes_subset_is_relabelled_in_the_given_order():
    config = DataConfig(dataset="digits", classes=(3, 1, 7))
    splits = load_splits(config, 4, np.random.default_rng(0))
    assert splits.n_classes == 3 and splits.class_labels == (3, 1, 7)
    assert splits.class_names == ("3", "1", "7")
    _, y_raw = raw(config, 0)
    for index, y in [(splits.train_index, splits.y_train), (splits.test_index, splits.y_test)]:
        np.testing.assert_array_equal(np.array([3, 1, 7])[y], y_raw[index])
    assert sum(splits.sizes) == int(np.isin(y_raw, [1, 3, 7]).sum())


def test_missing_class_names_the_field_and_present_labels():
    with pytest.raises(ConfigError) as err:
        load_splits(DataConfig(dataset="iris", classes=(0, 5)), 2, np.random.default_rng(0))
    message = str(err.value)
    assert "data.classes" in message and "[5]" in message and "[0, 1, 2]" in message


def test_max_samples_is_a_stratified_subset():
    config = DataConfig(dataset="digits", max_samples=200)
    splits = load_splits(config, 4, np.random.default_rng(3))
    assert sum(splits.sizes) == 200
    _, y_raw = raw(config, 3)
    kept = np.concatenate([splits.y_train, splits.y_val, splits.y_test])
    expected = np.bincount(y_raw) * 200 / len(y_raw)
    np.testing.assert_array_less(np.abs(np.bincount(kept, minlength=10) - expected), 1.0 + 1e-9)


def test_too_few_training_samples_is_a_config_error():
    config = DataConfig(dataset="digits", max_samples=20, val_fraction=0.45, test_fraction=0.45)
    with pytest.raises(ConfigError, match=r"circuit\.n_qubits"):
        load_splits(config, 4, np.random.default_rng(0))


@pytest.mark.parametrize("name", ["digits", "classification"])
def test_same_seed_same_splits_different_seed_different(name):
    config = DataConfig(dataset=name, n_samples=200)
    a = load_splits(config, 4, np.random.default_rng(11))
    b = load_splits(config, 4, np.random.default_rng(11))
    c = load_splits(config, 4, np.random.default_rng(12))
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "train_index"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.train_index, c.train_index)


def test_unknown_dataset_is_a_config_error_naming_field_and_allowed_values():
    allowed = ", ".join(DATASETS.names())
    with pytest.raises(ConfigError) as err:
        build_config(DataConfig, {"dataset": "mnist"}, "data")
    message = str(err.value)
    assert "dataset" in message and "mnist" in message and allowed in message
    assert "breast_cancer, classification, digits, iris, moons, movie_snippets, rotten_tomatoes, wine" in allowed

    with pytest.raises(pydantic.ValidationError, match="unknown dataset 'mnist'; allowed: "):
        DataConfig.model_validate({"dataset": "mnist"})
