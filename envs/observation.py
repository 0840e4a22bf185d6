"""Observation layout of the QFL suite: per-client features followed by global features.

The flat observation (the default, so SB3's ``MlpPolicy`` works as is) is a ``float32`` vector:
the client block ``[N, len(CLIENT_FEATURES)]`` flattened row-major (client 0's features first), then the
``len(GLOBAL_FEATURES)`` global features. The ``Dict`` observation (``observation: dict`` in the env config)
holds the same numbers as ``{"clients": [N, F], "global": [G]}``.

Controllers read observations by name through :class:`ObservationLayout` (``env.unwrapped.layout``), so
adding a feature at the end of a tuple never breaks them. All features are scaled to comparable ranges and
clipped to the bounds in :data:`CLIENT_FEATURE_BOUNDS` / :data:`GLOBAL_FEATURE_BOUNDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium import spaces

from .rewards import uniform_loss

if TYPE_CHECKING:
    from qflgym.qfl_core.federation import Federation

__all__ = [
    "CLIENT_FEATURES",
    "CLIENT_FEATURES_V1",
    "CLIENT_FEATURE_BOUNDS",
    "FEATURE_SETS",
    "GLOBAL_FEATURES",
    "GLOBAL_FEATURES_V1",
    "GLOBAL_FEATURE_BOUNDS",
    "LABEL_FEATURES",
    "MAX_LABEL_CLASSES",
    "ObservationLayout",
    "RoundScales",
    "client_step_costs",
    "static_client_features",
]

#: Classes covered by the per-client label-distribution features (``label_frac_0`` ... ``label_frac_9``);
#: a federation with fewer classes leaves the extra columns at 0, one with more is rejected by the env.
MAX_LABEL_CLASSES = 10

#: The per-client label-distribution features: ``label_frac_j`` = the fraction of the client's training
#: samples in class ``j`` (the federation's class order), 0 for ``j >= K``. They let a controller recognize
#: clients whose data complement each other, which the scalar ``label_skew`` cannot.
LABEL_FEATURES: tuple[str, ...] = tuple(f"label_frac_{j}" for j in range(MAX_LABEL_CLASSES))

#: Per-client features, in column order (see ``docs/envs/observation.md`` for the scaling of each).
CLIENT_FEATURES: tuple[str, ...] = (
    "data_size",  # training samples / the largest client's samples, in (0, 1]
    "label_skew",  # total-variation distance between the client's and the global label distribution, [0, 1]
    "last_loss",  # training loss of the global model on the client when it last trained / ln(K); 1 = unseen
    "rounds_since_selected",  # (rounds since the client was last selected) / round budget, [0, 1]
    "times_selected",  # times selected / round budget, [0, 1]
    "noise_level",  # 1 - (1 - 4p/3)^L (1 - 2r): attenuation of <Z> by depolarizing p and readout error r
    "shot_noise",  # 1 / sqrt(shots) (0 for exact expectations)
    "latency",  # seconds per circuit execution / the slowest client's, (0, 1]
    "available",  # 1 if the client can take part this round
    "last_update_norm",  # tanh(norm of its last update / (base lr x base local steps))
    "update_cosine",  # cosine between its last update and that round's aggregated update, [-1, 1]
    *LABEL_FEATURES,  # fraction of its training samples in class j (0 for classes the federation lacks), [0, 1]
)

#: Global features, in order.
GLOBAL_FEATURES: tuple[str, ...] = (
    "round_fraction",  # rounds run / round budget
    "val_accuracy",  # validation accuracy of the global model (1/K before the first round)
    "val_loss",  # validation loss / ln(K) (1 before the first round)
    "val_accuracy_change",  # change of val_accuracy in the last round
    "val_loss_change",  # change of val_loss (scaled) in the last round
    "cumulative_bytes",  # bytes moved / (round budget x bytes of a round with every client)
    "cumulative_wall_time",  # simulated seconds / (round budget x reference round time)
    "cumulative_shots",  # shots / (round budget x reference shots of a round with every client)
    "learning_rate",  # log10(lr of the last round / base lr)
    "local_steps",  # local steps of the last round / the largest allowed
    "available_fraction",  # fraction of clients available this round
    "target_gap",  # target accuracy - val_accuracy (0 without a target)
)

#: Client features of the v1 envs: the v0 ones, then what one local step on the client costs in the env's
#: objective units (see ``cost_scale`` in the env config), so a controller can price a cohort: the round's
#: time is the slowest member's, its shots add up.
CLIENT_FEATURES_V1: tuple[str, ...] = (
    *CLIENT_FEATURES,
    "step_time",  # simulated seconds of one local step on the client / cost_scale
    "step_shot_cost",  # shot_price x shots of one local step on the client / cost_scale
)

#: Global features of the v1 envs: the v0 ones, then the cost spent so far.
GLOBAL_FEATURES_V1: tuple[str, ...] = (
    *GLOBAL_FEATURES,
    "cost_spent",  # cost so far / cost_budget (/ (round budget x cost_scale) without a cost budget)
)

#: The observation versions: ``features`` in the env config names one.
FEATURE_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "v0": (CLIENT_FEATURES, GLOBAL_FEATURES),
    "v1": (CLIENT_FEATURES_V1, GLOBAL_FEATURES_V1),
}

#: ``(low, high)`` of each client feature.
CLIENT_FEATURE_BOUNDS: dict[str, tuple[float, float]] = {
    "data_size": (0.0, 1.0),
    "label_skew": (0.0, 1.0),
    "last_loss": (0.0, 10.0),
    "rounds_since_selected": (0.0, 1.0),
    "times_selected": (0.0, 1.0),
    "noise_level": (0.0, 1.0),
    "shot_noise": (0.0, 1.0),
    "latency": (0.0, 1.0),
    "available": (0.0, 1.0),
    "last_update_norm": (0.0, 1.0),
    "update_cosine": (-1.0, 1.0),
    "step_time": (0.0, 100.0),
    "step_shot_cost": (0.0, 100.0),
} | {name: (0.0, 1.0) for name in LABEL_FEATURES}

#: ``(low, high)`` of each global feature.
GLOBAL_FEATURE_BOUNDS: dict[str, tuple[float, float]] = {
    "round_fraction": (0.0, 1.0),
    "val_accuracy": (0.0, 1.0),
    "val_loss": (0.0, 10.0),
    "val_accuracy_change": (-1.0, 1.0),
    "val_loss_change": (-10.0, 10.0),
    "cumulative_bytes": (0.0, 10.0),
    "cumulative_wall_time": (0.0, 10.0),
    "cumulative_shots": (0.0, 10.0),
    "learning_rate": (-3.0, 3.0),
    "local_steps": (0.0, 10.0),
    "available_fraction": (0.0, 1.0),
    "target_gap": (-1.0, 1.0),
    "cost_spent": (0.0, 10.0),
}


class ObservationLayout:
    """Where each feature lives in an observation of an env with ``n_clients`` clients.

    Works on single observations and on batches (any leading dimensions, e.g. from a ``VecEnv``), flat or
    ``Dict``.

    Args:
        n_clients: N.
        features: The observation version, a key of :data:`FEATURE_SETS` (``"v0"``, ``"v1"``).

    Raises:
        ValueError: If ``features`` is not a known version.

    Example:
        >>> layout = env.unwrapped.layout
        >>> losses = layout.client(obs, "last_loss")      # [N]
        >>> acc = layout.global_(obs, "val_accuracy")     # float
    """

    def __init__(self, n_clients: int, features: str = "v0") -> None:
        if features not in FEATURE_SETS:
            raise ValueError(f"features: unknown observation version {features!r}; allowed: {', '.join(FEATURE_SETS)}")
        self.n_clients = int(n_clients)
        self.features = features
        self.client_features, self.global_features = FEATURE_SETS[features]
        self.client_index = {name: i for i, name in enumerate(self.client_features)}
        self.global_index = {name: i for i, name in enumerate(self.global_features)}
        self.n_client_features = len(self.client_features)
        self.n_global_features = len(self.global_features)
        self.client_size = self.n_clients * self.n_client_features
        self.size = self.client_size + self.n_global_features
        self.client_low = np.array([CLIENT_FEATURE_BOUNDS[f][0] for f in self.client_features], dtype=np.float32)
        self.client_high = np.array([CLIENT_FEATURE_BOUNDS[f][1] for f in self.client_features], dtype=np.float32)
        self.global_low = np.array([GLOBAL_FEATURE_BOUNDS[f][0] for f in self.global_features], dtype=np.float32)
        self.global_high = np.array([GLOBAL_FEATURE_BOUNDS[f][1] for f in self.global_features], dtype=np.float32)

    def flat_space(self) -> spaces.Box:
        """The flat ``Box`` observation space."""
        low = np.concatenate([np.tile(self.client_low, self.n_clients), self.global_low])
        high = np.concatenate([np.tile(self.client_high, self.n_clients), self.global_high])
        return spaces.Box(low, high, dtype=np.float32)

    def dict_space(self) -> spaces.Dict:
        """The ``Dict`` observation space ``{"clients": [N, F], "global": [G]}``."""
        return spaces.Dict(
            {
                "clients": spaces.Box(
                    np.tile(self.client_low, (self.n_clients, 1)),
                    np.tile(self.client_high, (self.n_clients, 1)),
                    dtype=np.float32,
                ),
                "global": spaces.Box(self.global_low, self.global_high, dtype=np.float32),
            }
        )

    def clients(self, obs: Any) -> np.ndarray:
        """The client block ``[..., N, F]`` (a view for flat observations)."""
        if isinstance(obs, dict):
            return np.asarray(obs["clients"])
        obs = np.asarray(obs)
        return obs[..., : self.client_size].reshape(*obs.shape[:-1], self.n_clients, self.n_client_features)

    def globals_(self, obs: Any) -> np.ndarray:
        """The global features ``[..., G]``."""
        if isinstance(obs, dict):
            return np.asarray(obs["global"])
        return np.asarray(obs)[..., self.client_size :]

    def client(self, obs: Any, name: str) -> np.ndarray:
        """The client feature ``name`` of every client: ``[..., N]``."""
        try:
            j = self.client_index[name]
        except KeyError:
            allowed = ", ".join(self.client_features)
            raise KeyError(f"unknown client feature {name!r}; allowed: {allowed}") from None
        return self.clients(obs)[..., j]

    def global_(self, obs: Any, name: str) -> Any:
        """The global feature ``name``: a float for one observation, ``[...]`` for a batch."""
        try:
            j = self.global_index[name]
        except KeyError:
            allowed = ", ".join(self.global_features)
            raise KeyError(f"unknown global feature {name!r}; allowed: {allowed}") from None
        value = self.globals_(obs)[..., j]
        return float(value) if np.ndim(value) == 0 else value

    def to_dict(self, obs: Any) -> dict[str, np.ndarray]:
        """The ``Dict``-space form of a flat observation (copies)."""
        if isinstance(obs, dict):
            return {"clients": np.array(obs["clients"]), "global": np.array(obs["global"])}
        return {"clients": self.clients(obs).copy(), "global": self.globals_(obs).copy()}

    def to_flat(self, obs: Any) -> np.ndarray:
        """The flat form of a ``Dict`` observation (or a copy of a flat one)."""
        if not isinstance(obs, dict):
            return np.array(obs, dtype=np.float32)
        c = np.asarray(obs["clients"], dtype=np.float32)
        g = np.asarray(obs["global"], dtype=np.float32)
        return np.concatenate([c.reshape(*c.shape[:-2], self.client_size), g], axis=-1)


def client_step_costs(fed: Federation, local_steps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """What ``local_steps`` local steps cost on each client: ``(simulated seconds [N], shots [N])``.

    A step trains on a minibatch of ``min(size, batch_size)`` samples, each needing ``1 + 2 P`` circuit
    executions (forward pass and parameter shifts), each taking the client's ``latency_s`` and ``shots``
    (the cost model of :mod:`qflgym.qfl_core.clients`).
    """
    sizes = np.array([s.size for s in fed.client_stats], dtype=np.float64)
    shots = np.array([p.shots or 0 for p in fed.profiles], dtype=np.float64)
    latency = np.array([p.latency_s for p in fed.profiles])
    per_sample = fed.executions_per_sample
    executions = np.minimum(sizes, fed.config.training.batch_size) * per_sample * local_steps
    return executions * latency, executions * shots


def static_client_features(
    fed: Federation, layout: ObservationLayout, shot_price: float, cost_scale: float
) -> np.ndarray:
    """The client features fixed for the federation's lifetime, ``[N, layout.n_client_features]`` ``float32``.

    Fills ``data_size``, ``label_skew``, ``label_frac_*``, ``noise_level``, ``shot_noise`` and ``latency``
    from the federation's client statistics and device profiles, and in v1 layouts ``step_time`` and
    ``step_shot_cost`` (:func:`client_step_costs` priced with ``shot_price`` and divided by ``cost_scale``);
    the other columns are 0 (the env writes them every step).

    Raises:
        ValueError: If the federation has more than :data:`MAX_LABEL_CLASSES` classes.
    """
    if fed.n_classes > MAX_LABEL_CLASSES:
        raise ValueError(
            f"the federation has {fed.n_classes} classes; the observation's label_frac_* features cover at "
            f"most {MAX_LABEL_CLASSES}"
        )
    index = layout.client_index
    sizes = np.array([s.size for s in fed.client_stats], dtype=np.float64)
    shots = np.array([p.shots or 0 for p in fed.profiles], dtype=np.float64)
    depol = np.array([p.depolarizing for p in fed.profiles])
    readout = np.array([p.readout_error for p in fed.profiles])
    latency = np.array([p.latency_s for p in fed.profiles])
    hist = np.array([s.label_histogram for s in fed.client_stats], dtype=np.float64)
    c = np.zeros((len(sizes), layout.n_client_features), dtype=np.float32)
    c[:, index["data_size"]] = sizes / sizes.max()
    c[:, index["label_skew"]] = [s.skew for s in fed.client_stats]
    first = index[LABEL_FEATURES[0]]
    c[:, first : first + hist.shape[1]] = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    n_layers = fed.config.circuit.n_layers
    c[:, index["noise_level"]] = 1.0 - (1.0 - 4.0 * depol / 3.0) ** n_layers * (1.0 - 2.0 * readout)
    c[:, index["shot_noise"]] = np.where(shots > 0, 1.0 / np.sqrt(np.maximum(shots, 1.0)), 0.0)
    c[:, index["latency"]] = latency / latency.max()
    if "step_time" in index:
        seconds, step_shots = client_step_costs(fed)
        c[:, index["step_time"]] = seconds / cost_scale
        c[:, index["step_shot_cost"]] = shot_price * step_shots / cost_scale
    return c


@dataclass(frozen=True)
class RoundScales:
    """Reference scales of a round in which every client trains, for the cost features and reward terms.

    Attributes:
        bytes: Bytes moved (every client downloads and uploads the parameters).
        time: Simulated seconds (the server's time plus the slowest client's local training).
        shots: Shots spent (at least 1, so exact expectations divide by 1).
        norm: The federation's ``lr x local_steps``, the scale of an update's norm.
        loss: ``ln K``, the loss of a uniform guess (1 for one class).
    """

    bytes: float
    time: float
    shots: float
    norm: float
    loss: float

    @classmethod
    def of(cls, fed: Federation, local_steps: int) -> RoundScales:
        """The scales of ``fed`` when every client trains for ``local_steps`` minibatch steps."""
        cfg = fed.config
        seconds, shots = client_step_costs(fed, local_steps)
        return cls(
            bytes=float(2 * fed.n_clients * fed.param_bytes),
            time=float(cfg.server_time_s + seconds.max()),
            shots=float(max(shots.sum(), 1.0)),
            norm=float(cfg.training.lr * cfg.training.local_steps),
            loss=uniform_loss(fed.n_classes),
        )
