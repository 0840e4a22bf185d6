"""A federation whose clients train a torch module by autograd, one client at a time.

:class:`ModuleFederation` is the round machinery shared by the model kinds that are not the batched VQC
(classical heads, the text encoder's adapter): the same data splits, partition, device profiles, availability
draws, strategies (FedAvg, FedProx, FedAdam, ...), local optimizers and :class:`RoundReport` as
:class:`~qflgym.qfl_core.federation.Federation`, so every env and controller runs on it unchanged.

What travels is the module's **trainable** parameters only (``requires_grad``), as one flat vector: a frozen
encoder's weights are neither sent nor aggregated, and ``bytes_uploaded`` / ``bytes_downloaded`` count
``n_params x element size`` per participant. Subclasses build the module and say how a batch of sample
indices becomes its input (:meth:`ModuleFederation.build_module`, :meth:`ModuleFederation.inputs`).

Cost model: a training sample costs :attr:`ModuleFederation.executions_per_sample` executions (the subclass
says what one is) of ``latency_s`` each; shots are spent only by quantum heads with finite shots.

Randomness: structure from ``numpy.random.default_rng(seed)``; minibatches and availability from one
``torch.Generator`` seeded from it, as in the VQC federation.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qflgym.config import ConfigError

from .circuits import CircuitSpec
from .clients import DeviceProfile, draw_profiles
from .config import FederationConfig
from .data import DataSplits, load_splits
from .federation import (
    ClientReport,
    FederationLike,
    RoundReport,
    RoundSnapshot,
    resolve_config,
    round_knobs,
    selection_ids,
)
from .federation import update_geometry as _geometry
from .optim import OPTIMIZERS
from .partition import ClientDataStats, client_statistics, partition
from .strategies import STRATEGIES

__all__ = ["ModuleFederation"]

SPLITS = ("train", "val", "test")


class ModuleFederation(RoundSnapshot, abc.ABC):
    """Federated training of a torch module (see the module docstring).

    Args:
        config: A :class:`FederationConfig`, a dict of one, or a preset name.
        seed: The one seed all randomness derives from.
    """

    def __init__(self, config: FederationLike, seed: int = 0) -> None:
        self.config: FederationConfig = resolve_config(config)
        self.seed = int(seed)
        cfg = self.config
        rng = np.random.default_rng(self.seed)
        embedding = cfg.circuit.embedding
        n_features = CircuitSpec.feature_count(cfg.circuit.n_qubits, embedding)
        self.data: DataSplits = load_splits(cfg.data, n_features, rng, embedding)
        self.parts = partition(self.data.y_train, cfg.clients.n_clients, cfg.partition, rng)
        self.client_stats: list[ClientDataStats] = client_statistics(self.data.y_train, self.parts, self.n_classes)
        self.profiles: list[DeviceProfile] = draw_profiles(cfg.clients, rng)
        self.strategy = STRATEGIES.get(cfg.strategy.name)(cfg.strategy)
        self.module = self.build_module(rng)
        self._trainable = [p for p in self.module.parameters() if p.requires_grad]
        if not self._trainable:
            raise ConfigError(f"model.kind={cfg.model.kind!r}: the module has no trainable parameters")
        self.params = self._vector()
        self._lr_scales = self.lr_scales()
        self.generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        self.round = 0
        self._labels = {"train": self.data.y_train, "val": self.data.y_val, "test": self.data.y_test}
        self._availability = torch.tensor([p.availability for p in self.profiles], dtype=torch.float64)
        self.available: np.ndarray = self._draw_availability()

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def build_module(self, rng: np.random.Generator) -> nn.Module:
        """The module mapping :meth:`inputs` to logits ``[B, K]`` (initialized from ``rng``)."""

    @abc.abstractmethod
    def inputs(self, split: str, indices: np.ndarray) -> Any:
        """The module's input for the samples ``indices`` of ``split`` (``train``, ``val`` or ``test``)."""

    @property
    @abc.abstractmethod
    def executions_per_sample(self) -> int:
        """Executions a training sample costs (the cost model's unit; see the module docstring)."""

    def lr_scales(self) -> torch.Tensor | None:
        """Per-parameter multipliers ``[P]`` of every local step (``None``: all 1), e.g. a smaller adapter lr."""
        return None

    # ------------------------------------------------------------------ the API envs use
    @property
    def n_clients(self) -> int:
        """Number of clients."""
        return len(self.profiles)

    @property
    def n_classes(self) -> int:
        """Classes of the learning task."""
        return self.data.n_classes

    @property
    def n_params(self) -> int:
        """Trainable (transferred) parameters."""
        return int(self.params.numel())

    @property
    def param_bytes(self) -> int:
        """Bytes of one model transfer: every trainable parameter in its own dtype (float32 adapter weights are 4)."""
        return sum(p.numel() * p.element_size() for p in self._trainable)

    @property
    def default_lr(self) -> float:
        """The configured local learning rate."""
        return self.config.training.lr

    @property
    def default_local_steps(self) -> int:
        """The configured number of local steps."""
        return self.config.training.local_steps

    def _vector(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._trainable]).clone()

    def _load_vector(self, vector: torch.Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in self._trainable:
                p.copy_(vector[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    def _draw_availability(self) -> np.ndarray:
        draws = torch.rand(self.n_clients, generator=self.generator, dtype=torch.float64)
        return (draws < self._availability).numpy()

    def _loss(self, split: str, indices: np.ndarray) -> torch.Tensor:
        logits = self.module(self.inputs(split, indices))
        return F.cross_entropy(logits, torch.as_tensor(self._labels[split][indices]))

    def _train_client(self, client: int, lr: float, local_steps: int, proximal_mu: float) -> dict[str, Any]:
        """Local training of one client from the global model; returns its parameters and what it cost."""
        own = self.parts[client]
        batch = min(self.config.training.batch_size, len(own))
        self._load_vector(self.params)
        optimizer = OPTIMIZERS.get(self.config.training.optimizer)(self.params.unsqueeze(0), lr)
        theta = self.params.unsqueeze(0)
        self.module.train()
        first = None
        loss_before = math.nan
        for _ in range(local_steps):
            picked = own[torch.randperm(len(own), generator=self.generator)[:batch].numpy()]
            first = picked if first is None else first
            loss = self._loss("train", picked)
            loss_before = float(loss.detach()) if math.isnan(loss_before) else loss_before
            grads = torch.autograd.grad(loss, self._trainable)
            grad = torch.cat([g.reshape(-1) for g in grads]).unsqueeze(0)
            if proximal_mu > 0:
                grad = grad + proximal_mu * (theta - self.params)
            stepped = optimizer.step(theta, grad)
            theta = stepped if self._lr_scales is None else theta + (stepped - theta) * self._lr_scales
            self._load_vector(theta[0])
        self.module.eval()
        with torch.no_grad():
            loss_after = float(self._loss("train", first))
        samples = batch * local_steps
        executions = samples * self.executions_per_sample
        profile = self.profiles[client]
        return {
            "params": theta[0].detach().clone(),
            "loss_before": loss_before,
            "loss_after": loss_after,
            "samples": samples,
            "executions": executions,
            "shots": executions * (profile.shots or 0),
            "seconds": executions * profile.latency_s,
        }

    def run_round(
        self, selected: Sequence[int] | np.ndarray, lr: float | None = None, local_steps: int | None = None
    ) -> RoundReport:
        """Run one federated round (the same contract as :meth:`Federation.run_round`)."""
        ids = selection_ids(selected, self.n_clients)
        lr, local_steps = round_knobs(lr, local_steps, self.config)
        online = self.available[ids]
        participants, dropped = ids[online], ids[~online]
        fits = []
        previous = self.params
        if len(participants):
            fit = self.strategy.configure_fit(lr, local_steps)
            fits = [self._train_client(int(c), lr, local_steps, fit.proximal_mu) for c in participants]
            stacked = torch.stack([f["params"] for f in fits])
            sizes = torch.tensor([len(self.parts[c]) for c in participants])
            self.params = self.strategy.aggregate_fit(previous, stacked, sizes)
        self._load_vector(self.params)
        clients, update_norm = self._client_reports(participants, fits, previous)
        stats = self.evaluate()
        self.round += 1
        self.available = self._draw_availability()
        client_time = max((f["seconds"] for f in fits), default=0.0)
        return RoundReport(
            round=self.round,
            selected=tuple(ids.tolist()),
            participants=tuple(participants.tolist()),
            dropped=tuple(dropped.tolist()),
            lr=lr,
            local_steps=local_steps,
            val_accuracy=stats["val_accuracy"],
            val_loss=stats["val_loss"],
            test_accuracy=stats["test_accuracy"],
            test_loss=stats["test_loss"],
            bytes_uploaded=self.param_bytes * len(participants),
            bytes_downloaded=self.param_bytes * len(participants),
            shots_used=sum(f["shots"] for f in fits),
            circuit_executions=sum(f["executions"] for f in fits),
            wall_time_s=client_time + self.config.server_time_s,
            global_update_norm=update_norm,
            clients=clients,
        )

    def _client_reports(
        self, participants: np.ndarray, fits: list[dict[str, Any]], previous: torch.Tensor
    ) -> tuple[tuple[ClientReport, ...], float]:
        if not fits:
            return (), 0.0
        updates = torch.stack([f["params"] for f in fits]) - previous
        norms, cosine, global_norm = _geometry(updates, self.params - previous)
        reports = tuple(
            ClientReport(
                client_id=int(c),
                loss_before=f["loss_before"],
                loss_after=f["loss_after"],
                update_norm=float(n),
                update_cosine=float(cos),
                samples_used=f["samples"],
                circuit_executions=f["executions"],
                shots_used=f["shots"],
                wall_time_s=f["seconds"],
            )
            for c, f, n, cos in zip(participants, fits, norms.tolist(), cosine.tolist(), strict=True)
        )
        return reports, global_norm

    def logits(self, split: str) -> torch.Tensor:
        """Logits ``[n, K]`` of the global model on every sample of ``split``, in chunks of ``eval_batch_size``."""
        n = len(self._labels[split])
        chunk = self.config.model.eval_batch_size
        self._load_vector(self.params)
        self.module.eval()
        with torch.no_grad():
            chunks = [np.arange(i, min(i + chunk, n)) for i in range(0, n, chunk)]
            return torch.cat([self.module(self.inputs(split, indices)) for indices in chunks])

    def evaluate(self) -> dict[str, float]:
        """Validation (and, unless ``evaluate_test`` is off, test) accuracy and loss of the global model."""
        out = {"test_accuracy": math.nan, "test_loss": math.nan}
        for split in ("val", "test") if self.config.evaluate_test else ("val",):
            logits, y = self.logits(split), torch.as_tensor(self._labels[split])
            out[f"{split}_accuracy"] = float((logits.argmax(1) == y).double().mean())
            out[f"{split}_loss"] = float(F.cross_entropy(logits, y))
        return out

    def _restored(self) -> None:
        """Load the restored parameter vector into the modules."""
        self._load_vector(self.params)
