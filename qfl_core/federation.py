"""The federation: a server, its clients and one method per round.

``Federation(config, seed).run_round(selected, lr, local_steps)`` runs one round of federated training:
selected clients that are available receive the global model, train locally on their quantum devices, and
upload their models; the server aggregates them with its strategy and evaluates the new global model on the
validation (and test) split. Everything the round cost is in the returned :class:`RoundReport`.

Availability: before every round each client is online with its profile's probability; the draw is public as
:attr:`Federation.available`, so a controller can avoid offline clients. A selected offline client drops out of
the round at no cost.

Randomness: structure (data split, partition, device profiles, initial model) is drawn once from
``numpy.random.default_rng(seed)``; everything at run time (availability, minibatches, shots) from one
``torch.Generator`` seeded from it. :meth:`Federation.state_dict` captures all mutable state, so a restored
federation runs the same next round bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qflgym.config import ConfigError

from .backends import make_backend
from .backends.base import ClientNoise
from .batched import EvalInput, logits_jointly, train_jointly
from .circuits import CircuitSpec
from .clients import ClientPool, DeviceProfile, FitResult, LocalTraining, draw_profiles
from .config import FederationConfig
from .data import DataSplits, load_splits
from .losses import masked_cross_entropy
from .partition import ClientDataStats, client_statistics, partition
from .strategies import STRATEGIES


@dataclass(frozen=True)
class ClientReport:
    """What one participating client did in a round."""

    client_id: int
    loss_before: float
    loss_after: float
    update_norm: float
    update_cosine: float
    """Cosine between this client's update and the aggregated update of the round (0 if either is zero)."""
    samples_used: int
    circuit_executions: int
    shots_used: int
    wall_time_s: float


@dataclass(frozen=True)
class RoundReport:
    """Everything one federated round did and cost.

    ``selected`` is what the controller asked for, ``dropped`` the selected clients that were offline this round
    (see :attr:`Federation.available`) and ``participants`` those that trained. ``test_*`` are NaN when test
    evaluation is switched off.
    """

    round: int
    selected: tuple[int, ...]
    participants: tuple[int, ...]
    dropped: tuple[int, ...]
    lr: float
    local_steps: int
    val_accuracy: float
    val_loss: float
    test_accuracy: float
    test_loss: float
    bytes_uploaded: int
    bytes_downloaded: int
    shots_used: int
    circuit_executions: int
    wall_time_s: float
    global_update_norm: float
    clients: tuple[ClientReport, ...]


@dataclass
class RoundPlan:
    """A validated round request of one federation and its local training (see :func:`run_rounds`)."""

    ids: np.ndarray
    participants: np.ndarray
    dropped: np.ndarray
    lr: float
    local_steps: int
    training: LocalTraining | None
    previous: torch.Tensor | None = None
    """The global model before aggregation (set by :meth:`Federation.aggregate`)."""


RoundRequest = tuple[Sequence[int] | np.ndarray, float | None, int | None]
"""``(selected, lr, local_steps)`` as :meth:`Federation.run_round` takes them."""


FederationLike = FederationConfig | Mapping[str, Any] | str


def resolve_config(config: FederationLike) -> FederationConfig:
    """Accept a config object, a plain dict, or the name of a preset in ``configs/federations/``."""
    if isinstance(config, FederationConfig):
        return config
    if isinstance(config, str):
        return FederationConfig.from_preset(config)
    return FederationConfig.from_dict(config)


def selection_ids(selected: Sequence[int] | np.ndarray, n_clients: int) -> np.ndarray:
    """Sorted int64 client ids from ids or a boolean mask over ``n_clients`` clients.

    Raises:
        ValueError: Naming ``selected`` and the allowed values when the selection is malformed.
    """
    ids = np.asarray(selected)
    if ids.dtype == bool:
        if ids.shape != (n_clients,):
            raise ValueError(f"selected: a boolean mask must have shape ({n_clients},), got {ids.shape}")
        return np.flatnonzero(ids).astype(np.int64)
    if ids.size == 0:
        return ids.astype(np.int64).reshape(0)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"selected: expected client ids (1-D integers) or a boolean mask, got {selected!r}")
    if ids.min() < 0 or ids.max() >= n_clients or len(np.unique(ids)) != len(ids):
        raise ValueError(f"selected: client ids must be distinct and in [0, {n_clients - 1}], got {ids.tolist()}")
    return np.sort(ids).astype(np.int64)


def round_knobs(lr: float | None, local_steps: int | None, config: FederationConfig) -> tuple[float, int]:
    """Validated ``(lr, local_steps)`` of a round, defaults from ``config.training``.

    Raises:
        ValueError: Naming the argument and the allowed values when one is out of range.
    """
    lr = config.training.lr if lr is None else float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: must be a finite positive number, got {lr!r}")
    local_steps = config.training.local_steps if local_steps is None else local_steps
    if isinstance(local_steps, bool) or int(local_steps) != local_steps or local_steps < 1:
        raise ValueError(f"local_steps: must be an integer >= 1, got {local_steps!r}")
    return lr, int(local_steps)


def update_geometry(updates: torch.Tensor, global_update: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Norms ``[C]`` of client updates, their cosines ``[C]`` with the global update (0 if either is zero), its norm."""
    with torch.no_grad():
        norms = torch.cat((updates, global_update.unsqueeze(0))).norm(dim=1)  # one reduction, row by row
        norms, global_norm = norms[:-1], norms[-1]
        denom = norms * global_norm
        cosine = torch.where(denom > 0, (updates @ global_update) / denom.clamp_min(1e-300), 0.0)
    return norms, cosine, float(global_norm)


class RoundSnapshot:
    """``state_dict`` / ``load_state_dict`` of every federation kind: what changes as rounds run.

    The snapshot holds the config and seed (checked on load), the round counter, the global parameter vector,
    the torch generator, the strategy's state and the availability; restoring it replays the next round bit for
    bit. Kinds with state derived from the parameters rebuild it in :meth:`_restored`.
    """

    config: FederationConfig
    seed: int
    round: int
    params: torch.Tensor
    generator: torch.Generator
    strategy: Any
    available: np.ndarray

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes as rounds run: restoring it replays the next round bit for bit."""
        return {
            "config": self.config.model_dump(mode="json"),
            "seed": self.seed,
            "round": self.round,
            "params": self.params.clone(),
            "generator": self.generator.get_state(),
            "strategy": self.strategy.state_dict(),
            "available": self.available.copy(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output of a federation with the same config and seed.

        Raises:
            ConfigError: If the snapshot was taken from a federation with another config or seed.
        """
        if state["seed"] != self.seed or state["config"] != self.config.model_dump(mode="json"):
            raise ConfigError(
                "state_dict: snapshot comes from a federation with another config or seed "
                f"(snapshot seed {state['seed']}, this federation's seed {self.seed})"
            )
        self.round = int(state["round"])
        self.params = state["params"].clone()
        self.generator.set_state(state["generator"])
        self.strategy.load_state_dict(state["strategy"])
        self.available = state["available"].copy()
        self._restored()

    def _restored(self) -> None:
        """Rebuild state derived from the restored parameters (nothing by default)."""


class Federation(RoundSnapshot):
    """A simulated quantum federation.

    Args:
        config: A :class:`FederationConfig`, a dict of one, or a preset name (e.g. ``"default"``).
        seed: The one seed all randomness derives from.
    """

    def __init__(self, config: FederationLike = "default", seed: int = 0) -> None:
        self.config = resolve_config(config)
        self.seed = int(seed)
        cfg = self.config
        rng = np.random.default_rng(self.seed)
        self.dtype = torch.float64 if cfg.backend.dtype == "float64" else torch.float32
        n_features = CircuitSpec.feature_count(cfg.circuit.n_qubits, cfg.circuit.embedding)
        self.data: DataSplits = load_splits(cfg.data, n_features, rng, cfg.circuit.embedding)
        parts = partition(self.data.y_train, cfg.clients.n_clients, cfg.partition, rng)
        self.client_stats: list[ClientDataStats] = client_statistics(self.data.y_train, parts, self.data.n_classes)
        self.profiles: list[DeviceProfile] = draw_profiles(cfg.clients, rng)
        self.spec = CircuitSpec.from_config(cfg.circuit, self.data.n_classes)
        self.backend = make_backend(self.spec, cfg.backend)
        self.strategy = STRATEGIES.get(cfg.strategy.name)(cfg.strategy)
        self.pool = ClientPool(
            self.spec,
            self.backend,
            [(self.data.x_train[idx], self.data.y_train[idx]) for idx in parts],
            self.profiles,
            cfg.training,
            self.dtype,
        )
        self.params = self.spec.init_params(rng, self.dtype)
        self.generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        self.round = 0
        # The evaluation set, laid out as rows of the clients' batch size, so the global model's evaluation and
        # the trained clients' losses run in one backend call (each row with its own parameters).
        eval_parts = [(self.data.x_val, self.data.y_val)]
        if cfg.evaluate_test:
            eval_parts.append((self.data.x_test, self.data.y_test))
        x_eval = np.concatenate([x for x, _ in eval_parts])
        self._n_eval, self._n_val = len(x_eval), len(self.data.y_val)
        batch = self.pool.batch
        n_rows = -(-self._n_eval // batch)
        padded = np.zeros((n_rows * batch, self.spec.n_features))
        padded[: self._n_eval] = x_eval
        self._eval_x = torch.as_tensor(padded, dtype=self.dtype).view(n_rows, batch, -1)
        self._eval_y = torch.as_tensor(np.concatenate([y for _, y in eval_parts]))
        self._eval_noise = ClientNoise.exact(n_rows)
        self._eval_states = self.backend.embed_inputs(self._eval_x)
        self._availability = torch.tensor([p.availability for p in self.profiles], dtype=torch.float64)
        self.available: np.ndarray = self._draw_availability()
        """Which clients are online for the coming round (drawn before it, so a controller can see it)."""

    def _draw_availability(self) -> np.ndarray:
        draws = torch.rand(self.n_clients, generator=self.generator, dtype=torch.float64)
        return (draws < self._availability).numpy()

    @property
    def n_clients(self) -> int:
        """Number of clients."""
        return len(self.profiles)

    @property
    def n_params(self) -> int:
        """Trainable parameters of the global model."""
        return self.spec.n_params

    @property
    def n_classes(self) -> int:
        """Classes of the learning task."""
        return self.data.n_classes

    @property
    def param_bytes(self) -> int:
        """Bytes of one model transfer (parameters x dtype size)."""
        return self.n_params * self.params.element_size()

    @property
    def executions_per_sample(self) -> int:
        """Circuit executions per training sample: ``1 + 2 x n_circuit_params`` (a parameter-shift gradient)."""
        return 1 + 2 * self.spec.n_circuit_params

    @property
    def default_lr(self) -> float:
        """The configured local learning rate."""
        return self.config.training.lr

    @property
    def default_local_steps(self) -> int:
        """The configured number of local steps."""
        return self.config.training.local_steps

    def _selection(self, selected: Sequence[int] | np.ndarray) -> np.ndarray:
        return selection_ids(selected, self.n_clients)

    def run_round(
        self, selected: Sequence[int] | np.ndarray, lr: float | None = None, local_steps: int | None = None
    ) -> RoundReport:
        """Run one federated round.

        Args:
            selected: Client ids, or a boolean mask over clients. Empty is valid: nothing trains.
            lr: Local learning rate (default: ``config.training.lr``).
            local_steps: Local minibatch steps (default: ``config.training.local_steps``).

        Raises:
            ValueError: Naming the argument and the allowed values when one is out of range.
        """
        return run_rounds([self], [(selected, lr, local_steps)])[0]

    def plan_round(
        self, selected: Sequence[int] | np.ndarray, lr: float | None = None, local_steps: int | None = None
    ) -> RoundPlan:
        """Validate a round's request and start its local training (see :func:`run_rounds`)."""
        ids = self._selection(selected)
        lr, local_steps = round_knobs(lr, local_steps, self.config)
        online = self.available[ids]
        participants, dropped = ids[online], ids[~online]
        training = None
        if len(participants):
            fit = self.strategy.configure_fit(lr, local_steps)
            training = LocalTraining(self.pool, self.params, participants, fit, self.generator)
        return RoundPlan(ids, participants, dropped, lr, local_steps, training)

    def aggregate(self, plan: RoundPlan) -> FitResult | None:
        """Aggregate the finished local training of ``plan`` into the global model; returns its result."""
        if plan.training is None:
            return None
        fit = plan.training.result()
        plan.previous, self.params = self.params, self.strategy.aggregate_fit(self.params, fit.params, fit.num_examples)
        return fit

    def finish_round(self, plan: RoundPlan, fit: FitResult | None, logits: torch.Tensor) -> RoundReport:
        """Book the round from the evaluation ``logits`` of :meth:`evaluation_input` and draw availability."""
        loss_after, (val_acc, val_loss, test_acc, test_loss) = self._evaluation_stats(fit, logits)
        client_reports: tuple[ClientReport, ...] = ()
        update_norm = 0.0
        executions = shots = 0
        client_time = 0.0
        if fit is not None:
            client_reports, update_norm = self._client_reports(fit, loss_after, plan.previous)
            executions = int(fit.circuit_executions.sum())
            shots = int(fit.shots_used.sum())
            client_time = float(fit.wall_time_s.max())
        self.round += 1
        self.available = self._draw_availability()
        return RoundReport(
            round=self.round,
            selected=tuple(plan.ids.tolist()),
            participants=tuple(plan.participants.tolist()),
            dropped=tuple(plan.dropped.tolist()),
            lr=plan.lr,
            local_steps=plan.local_steps,
            val_accuracy=val_acc,
            val_loss=val_loss,
            test_accuracy=test_acc,
            test_loss=test_loss,
            bytes_uploaded=self.param_bytes * len(plan.participants),
            bytes_downloaded=self.param_bytes * len(plan.participants),
            shots_used=shots,
            circuit_executions=executions,
            wall_time_s=client_time + self.config.server_time_s,
            global_update_norm=update_norm,
            clients=client_reports,
        )

    def _client_reports(
        self, fit: FitResult, loss_after: torch.Tensor, previous: torch.Tensor
    ) -> tuple[tuple[ClientReport, ...], float]:
        norms, cosine, global_norm = update_geometry(fit.params - previous, self.params - previous)
        with torch.no_grad():
            rows = torch.stack([fit.loss_before, loss_after, norms, cosine], dim=1).tolist()
        reports = tuple(
            ClientReport(
                client_id=int(cid),
                loss_before=row[0],
                loss_after=row[1],
                update_norm=row[2],
                update_cosine=row[3],
                samples_used=int(samples),
                circuit_executions=int(execs),
                shots_used=int(shots),
                wall_time_s=float(seconds),
            )
            for cid, row, samples, execs, shots, seconds in zip(
                fit.client_ids.tolist(),
                rows,
                fit.samples_used.tolist(),
                fit.circuit_executions.tolist(),
                fit.shots_used.tolist(),
                fit.wall_time_s.tolist(),
                strict=True,
            )
        )
        return reports, global_norm

    def evaluation_input(self, fit: FitResult | None) -> EvalInput:
        """The call that evaluates the global model and the trained clients' "loss after" together.

        The global model runs on the evaluation rows, every trained client (first rows) on its first minibatch.
        """
        params = self.params.expand(len(self._eval_x), -1)
        x, noise, states = self._eval_x, self._eval_noise, self._eval_states
        if fit is not None:
            params = torch.cat([fit.params, params])
            x = torch.cat([fit.first_batch.x, x])
            noise = fit.noise + noise
            first = fit.first_batch.states
            states = None if states is None or first is None else torch.cat([first, states])
        return params, x, noise, self.generator, states

    def _evaluation_stats(
        self, fit: FitResult | None, logits: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
        """``(loss_after [C], (val_acc, val_loss, test_acc, test_loss))`` from the evaluation logits.

        Test figures are NaN when test evaluation is off.
        """
        n = 0 if fit is None else len(fit.client_ids)
        with torch.no_grad():
            if fit is None:
                loss_after = logits[:0, 0, 0]
            else:
                loss_after = masked_cross_entropy(logits[:n], fit.first_batch.y, fit.first_batch.mask)
            eval_logits = logits[n:].flatten(0, 1)[: self._n_eval]
            ce = F.cross_entropy(eval_logits, self._eval_y, reduction="none")
            correct = (eval_logits.argmax(1) == self._eval_y).to(ce.dtype)
            v, rows = self._n_val, torch.stack((correct, ce))
            stats = torch.cat((rows[:, :v].mean(1), rows[:, v:].mean(1))).tolist()  # val acc, loss, test acc, loss
        if not self.config.evaluate_test:
            stats[2:] = [math.nan, math.nan]
        val_acc, val_loss, test_acc, test_loss = stats
        return loss_after, (val_acc, val_loss, test_acc, test_loss)

    def evaluate(self) -> dict[str, float]:
        """Evaluate the current global model without running a round."""
        (logits,) = logits_jointly(self.spec, self.backend, [self.evaluation_input(None)])
        _, (val_acc, val_loss, test_acc, test_loss) = self._evaluation_stats(None, logits)
        return {
            "val_accuracy": val_acc,
            "val_loss": val_loss,
            "test_accuracy": test_acc,
            "test_loss": test_loss,
        }


def run_rounds(federations: Sequence[Federation], requests: Sequence[RoundRequest]) -> list[RoundReport]:
    """Run one round of each federation, all of them sharing backend calls (see :mod:`.batched`).

    Every federation's round is the one :meth:`Federation.run_round` runs alone, bit for bit. The federations
    must simulate the same circuit (the first one's backend runs the shared calls).

    Raises:
        ValueError: If the lengths differ, the circuits differ, or a request is invalid.
    """
    if len(federations) != len(requests):
        raise ValueError(f"got {len(requests)} round requests for {len(federations)} federations")
    if not federations:
        return []
    if not all(isinstance(fed, Federation) for fed in federations):  # other model kinds: one round at a time
        return [fed.run_round(*request) for fed, request in zip(federations, requests, strict=True)]
    first = federations[0]
    if any(fed.spec != first.spec or fed.config.backend != first.config.backend for fed in federations):
        raise ValueError("run_rounds: all federations must share the circuit and backend settings")
    plans = [fed.plan_round(*request) for fed, request in zip(federations, requests, strict=True)]
    train_jointly(first.backend, [plan.training for plan in plans if plan.training is not None])
    fits = [fed.aggregate(plan) for fed, plan in zip(federations, plans, strict=True)]
    logits = logits_jointly(
        first.spec, first.backend, [fed.evaluation_input(fit) for fed, fit in zip(federations, fits, strict=True)]
    )
    return [
        fed.finish_round(plan, fit, part) for fed, plan, fit, part in zip(federations, plans, fits, logits, strict=True)
    ]
