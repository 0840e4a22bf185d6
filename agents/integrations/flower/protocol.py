"""What a qflgym-controlled Flower run exchanges: record keys, client properties, train metrics, configs.

Everything travels in Flower's Message API records (``RecordDict``):

* **query** (server -> client, once per client and federation seed): the reply's ``ConfigRecord``
  ``"properties"`` holds :data:`CLIENT_PROPERTIES`. They feed the static per-client features of the
  observation (``data_size``, ``label_skew``, ``label_frac_*``, ``noise_level``, ``shot_noise``,
  ``latency``), scaled exactly as the envs scale them.
* **train** (server -> selected clients): ``ArrayRecord`` ``"arrays"`` (the global model) and ``ConfigRecord``
  ``"config"`` with :data:`TRAIN_CONFIG` (the controller's lr and local steps, plus whatever the wrapped
  Flower strategy adds, e.g. FedProx's ``"proximal-mu"``). The reply holds ``"arrays"`` (the trained model)
  and one ``MetricRecord`` ``"metrics"`` with :data:`TRAIN_METRICS`.
* **central evaluation** (server side, Flower's ``evaluate_fn``): a ``MetricRecord`` with
  :data:`EVALUATE_METRICS`, for the global features (``val_accuracy``, ``val_loss``, ``target_gap``, ...).

The update norm and the cosine between a client's update and the aggregated update (``last_update_norm``,
``update_cosine``) are computed by the server from the arrays, so clients do not report them. A model is one
flat ``float64`` (or ``float32``) parameter vector: an ``ArrayRecord`` holding a single array.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from qflgym.qfl_core.clients import DeviceProfile

__all__ = [
    "ARRAYS_KEY",
    "CLIENT_PROPERTIES",
    "CONFIG_KEY",
    "EVALUATE_METRICS",
    "METRICS_KEY",
    "PROPERTIES_KEY",
    "TRAIN_CONFIG",
    "TRAIN_METRICS",
    "ClientInfo",
    "arrays_to_params",
    "metric_record",
    "params_to_arrays",
    "properties_record",
    "read_metrics",
    "read_properties",
    "read_train_metrics",
]

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
PROPERTIES_KEY = "properties"

#: Client properties (query reply), name: meaning. All are required.
CLIENT_PROPERTIES: dict[str, str] = {
    "client-id": "int, the client's index 0..N-1 in the controller's observation (stable across rounds)",
    "num-examples": "int, training samples (also the FedAvg weight)",
    "label-histogram": "list[int] of length K, training samples per class (K = classes of the task)",
    "shots": "int, shots per circuit execution (0 = exact expectations)",
    "depolarizing": "float, depolarizing probability per qubit and layer",
    "readout-error": "float, bit-flip probability of each measured qubit",
    "latency-s": "float, seconds per circuit execution",
}

#: Train config keys the strategy sends (besides Flower's ``"server-round"``), name: meaning.
TRAIN_CONFIG: dict[str, str] = {
    "lr": "float, local learning rate chosen by the controller (or the env's fixed lr)",
    "local-steps": "int, local minibatch steps chosen by the controller (or the env's fixed steps)",
    "federation-seed": "int, the seed of the federation run (qflgym clients derive their randomness from it)",
}

#: Train reply metrics, name: meaning. ``client-id``, ``num-examples`` and ``train-loss`` are required; the
#: cost metrics default to 0 (then the cost features of the observation stay 0).
TRAIN_METRICS: dict[str, str] = {
    "client-id": "int, as in the properties",
    "num-examples": "int, training samples (the aggregation weight)",
    "train-loss": "float, loss of the received global model on the client's first minibatch (natural log)",
    "loss-after": "float, loss of the trained model on that minibatch",
    "samples-used": "int, samples processed over all local steps",
    "circuit-executions": "int, circuit executions the training took",
    "shots-used": "int, shots spent",
    "wall-time-s": "float, device seconds the training took",
}
_REQUIRED_TRAIN = ("client-id", "num-examples", "train-loss")

#: Central evaluation metrics (``evaluate_fn``), name: meaning. ``val-*`` are required.
EVALUATE_METRICS: dict[str, str] = {
    "val-accuracy": "float in [0, 1], validation accuracy of the global model",
    "val-loss": "float, validation cross-entropy (natural log)",
    "test-accuracy": "float, test accuracy (optional; reported in results, never observed)",
    "test-loss": "float, test cross-entropy (optional)",
}


@dataclass(frozen=True)
class ClientInfo:
    """A client as the server knows it from its properties."""

    client_id: int
    num_examples: int
    label_histogram: np.ndarray
    profile: DeviceProfile


def _require(record: Mapping[str, Any], names: Any, what: str) -> None:
    missing = [n for n in names if n not in record]
    if missing:
        raise ValueError(f"{what} lack {', '.join(missing)}; required: {', '.join(names)}")


def _finite(value: Any, name: str, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what}: {name} must be finite, got {value!r}")
    return number


def read_properties(record: Mapping[str, Any]) -> ClientInfo:
    """Validate a client's properties (see :data:`CLIENT_PROPERTIES`).

    Raises:
        ValueError: Naming the missing or bad property and the required ones.
    """
    what = "client properties"
    _require(record, tuple(CLIENT_PROPERTIES), what)
    histogram = np.asarray(record["label-histogram"], dtype=np.int64)
    if histogram.ndim != 1 or histogram.size == 0 or (histogram < 0).any():
        raise ValueError(f"{what}: label-histogram must be a non-empty list of counts >= 0, got {histogram.tolist()}")
    if int(histogram.sum()) != int(record["num-examples"]):
        raise ValueError(
            f"{what}: label-histogram sums to {int(histogram.sum())}, not num-examples={record['num-examples']}"
        )
    shots = int(record["shots"])
    if shots < 0:
        raise ValueError(f"{what}: shots must be >= 0 (0 = exact), got {shots}")
    profile = DeviceProfile(
        shots=shots or None,
        depolarizing=_finite(record["depolarizing"], "depolarizing", what),
        readout_error=_finite(record["readout-error"], "readout-error", what),
        latency_s=_finite(record["latency-s"], "latency-s", what),
        availability=1.0,
    )
    return ClientInfo(int(record["client-id"]), int(record["num-examples"]), histogram, profile)


def properties_record(client_id: int, label_histogram: np.ndarray, profile: DeviceProfile) -> ConfigRecord:
    """The properties of a qflgym client (the inverse of :func:`read_properties`)."""
    return ConfigRecord(
        {
            "client-id": int(client_id),
            "num-examples": int(np.sum(label_histogram)),
            "label-histogram": [int(c) for c in label_histogram],
            "shots": int(profile.shots or 0),
            "depolarizing": float(profile.depolarizing),
            "readout-error": float(profile.readout_error),
            "latency-s": float(profile.latency_s),
        }
    )


def read_metrics(record: Mapping[str, Any], names: Any, required: Any, what: str) -> dict[str, float]:
    """The finite numbers ``names`` of a metric record (absent optional ones are 0).

    Raises:
        ValueError: Naming a missing required metric, or one that is not finite.
    """
    _require(record, tuple(required), what)
    return {name: _finite(record.get(name, 0.0), name, what) for name in names}


def read_train_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """Validate a train reply's metrics (see :data:`TRAIN_METRICS`)."""
    return read_metrics(record, TRAIN_METRICS, _REQUIRED_TRAIN, "train metrics")


def params_to_arrays(params: torch.Tensor | np.ndarray) -> ArrayRecord:
    """One flat parameter vector as an ``ArrayRecord`` (a copy)."""
    array = params.detach().cpu().numpy() if isinstance(params, torch.Tensor) else np.asarray(params)
    return ArrayRecord(numpy_ndarrays=[np.array(array, copy=True)])


def arrays_to_params(arrays: ArrayRecord) -> np.ndarray:
    """The flat parameter vector of an ``ArrayRecord`` written by :func:`params_to_arrays`.

    Raises:
        ValueError: If the record does not hold exactly one 1-D array.
    """
    ndarrays = arrays.to_numpy_ndarrays()
    if len(ndarrays) != 1 or ndarrays[0].ndim != 1:
        raise ValueError(
            f"arrays: expected one flat parameter vector, got {len(ndarrays)} array(s) of shapes "
            f"{[a.shape for a in ndarrays]}"
        )
    return ndarrays[0]


def metric_record(values: Mapping[str, float]) -> MetricRecord:
    """A ``MetricRecord`` of the finite values (NaN entries, e.g. a switched-off test split, are left out)."""
    return MetricRecord({k: float(v) for k, v in values.items() if math.isfinite(float(v))})
