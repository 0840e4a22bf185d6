"""Quantum clients: device profiles and vectorized local training.

Each client owns a shard of the training data and a :class:`DeviceProfile` (shots, gate and readout noise,
latency per circuit execution, availability). :class:`ClientPool` trains any subset of clients in one batched
call: the selected clients' parameter copies form a ``[C, P]`` stack, each client draws its own minibatches
from its own data, and one autograd call gives every client the gradient of its own loss.

Cost model (what a round would cost on real devices): one training step on a batch of ``b`` samples needs
``b * (1 + 2 * n_circuit_params)`` circuit executions (a forward pass plus the parameter-shift rule for the
gradient); shots spent are ``executions * shots`` (zero for exact simulation) and the client's wall time is
``executions * latency_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .backends.base import Backend, ClientNoise, Generators
from .circuits import CircuitSpec
from .config import ClientsConfig, PerClient, TrainingConfig
from .losses import masked_cross_entropy
from .optim import OPTIMIZERS
from .strategies import FitConfig


@dataclass(frozen=True)
class DeviceProfile:
    """The quantum device a client trains on.

    Attributes:
        shots: Shots per circuit execution, or None for exact expectations.
        depolarizing: Depolarizing probability per qubit after every layer.
        readout_error: Bit-flip probability of each measured qubit.
        latency_s: Seconds per circuit execution.
        availability: Probability of taking part in a round when selected.
    """

    shots: int | None
    depolarizing: float
    readout_error: float
    latency_s: float
    availability: float


def _draw(value: PerClient, n: int, rng: np.random.Generator, *, log: bool = False) -> np.ndarray:
    if not isinstance(value, tuple):
        return np.full(n, float(value))
    low, high = value
    if log:
        return np.exp(rng.uniform(np.log(low), np.log(high), size=n))
    return rng.uniform(low, high, size=n)


def draw_profiles(config: ClientsConfig, rng: np.random.Generator) -> list[DeviceProfile]:
    """Draw one device profile per client from the population config.

    Ranges ``[low, high]`` are drawn uniformly (latency log-uniformly); a tuple of shot counts is sampled per
    client. Draw order is fixed, so the same seed gives the same population.
    """
    n = config.n_clients
    if isinstance(config.shots, tuple):
        shots = [config.shots[i] for i in rng.integers(len(config.shots), size=n)]
    else:
        shots = [config.shots] * n
    depolarizing = _draw(config.depolarizing, n, rng)
    readout = _draw(config.readout_error, n, rng)
    latency = _draw(config.latency_s, n, rng, log=True)
    availability = _draw(config.availability, n, rng)
    return [
        DeviceProfile(
            shots=None if shots[i] is None else int(shots[i]),
            depolarizing=float(depolarizing[i]),
            readout_error=float(readout[i]),
            latency_s=float(latency[i]),
            availability=float(availability[i]),
        )
        for i in range(n)
    ]


class Batch(NamedTuple):
    """One minibatch of every training client.

    Attributes:
        x: ``[C, B, Q]`` features.
        y: ``[C, B]`` labels.
        mask: ``[C, B]`` 1 for real samples, 0 for padding.
        states: ``[C, B, ...]`` the backend's prepared inputs of ``x``
            (:meth:`~qflgym.qfl_core.backends.base.Backend.embed_inputs`), or ``None``.
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    states: torch.Tensor | None = None


@dataclass(frozen=True)
class FitResult:
    """Outcome of local training for a batch of clients (rows follow ``client_ids``).

    Attributes:
        client_ids: The clients that trained.
        params: ``[C, P]`` trained parameters.
        loss_before: ``[C]`` loss on each client's first minibatch before training.
        first_batch: That :class:`Batch`, for the loss after training (which
            :class:`~qflgym.qfl_core.federation.Federation` evaluates in the same backend call as the new global
            model).
        noise: The clients' device noise.
        num_examples: ``[C]`` training-set size of each client (the aggregation weight).
        samples_used: ``[C]`` samples processed over all local steps.
        circuit_executions: ``[C]`` circuit executions the training would take on hardware.
        shots_used: ``[C]`` shots spent.
        wall_time_s: ``[C]`` simulated device time.
    """

    client_ids: np.ndarray
    params: torch.Tensor
    loss_before: torch.Tensor
    first_batch: Batch
    noise: ClientNoise
    num_examples: torch.Tensor
    samples_used: np.ndarray
    circuit_executions: np.ndarray
    shots_used: np.ndarray
    wall_time_s: np.ndarray


class ClientPool:
    """All clients of a federation, their data and devices, trained in batched calls.

    Args:
        spec: The circuit every client trains.
        backend: Circuit simulator.
        client_data: Per client ``(x [n_i, Q], y [n_i])`` arrays.
        profiles: One device profile per client.
        training: Optimizer and batch size.
        dtype: Real dtype of features and parameters.
    """

    def __init__(
        self,
        spec: CircuitSpec,
        backend: Backend,
        client_data: Sequence[tuple[np.ndarray, np.ndarray]],
        profiles: Sequence[DeviceProfile],
        training: TrainingConfig,
        dtype: torch.dtype,
    ) -> None:
        if len(client_data) != len(profiles):
            raise ValueError(f"got data for {len(client_data)} clients but {len(profiles)} device profiles")
        self.spec = spec
        self.backend = backend
        self.profiles = list(profiles)
        self.optimizer_cls = OPTIMIZERS.get(training.optimizer)
        self.batch_size = training.batch_size
        sizes = np.array([len(y) for _, y in client_data], dtype=np.int64)
        max_n = int(sizes.max())
        x = np.zeros((len(client_data), max_n, spec.n_features))
        y = np.zeros((len(client_data), max_n), dtype=np.int64)
        for i, (xi, yi) in enumerate(client_data):
            x[i, : len(yi)] = xi
            y[i, : len(yi)] = yi
        self.sizes = sizes
        self._x = torch.as_tensor(x, dtype=dtype)
        self._y = torch.as_tensor(y)
        self._sizes = torch.as_tensor(sizes)
        self._padding = torch.arange(max_n)[None, :] >= self._sizes[:, None]
        self._batch = min(self.batch_size, max_n)
        #: ``[N, batch]`` 1 for the rows of a client's minibatch that hold a sample (all but small clients' tails)
        self._batch_mask = (torch.arange(self._batch)[None, :] < self._sizes[:, None]).to(self._x.dtype)
        self._executions_per_sample = 1 + 2 * spec.n_circuit_params
        self._latency = np.array([p.latency_s for p in profiles])
        self._shots = np.array([p.shots or 0 for p in profiles], dtype=np.int64)
        self._states = backend.embed_inputs(self._x)  # prepared once: minibatches gather rows of it
        self._noise = ClientNoise(
            shots=tuple(p.shots for p in profiles),
            depolarizing=tuple(p.depolarizing for p in profiles),
            readout_error=tuple(p.readout_error for p in profiles),
        )

    def __len__(self) -> int:
        return len(self.profiles)

    @property
    def batch(self) -> int:
        """Rows of every training minibatch (the batch size, or the largest client's size if smaller)."""
        return self._batch

    def noise(self, client_ids: np.ndarray) -> ClientNoise:
        """The device noise of ``client_ids``, in order."""
        return self._noise.select(client_ids.tolist())

    def loss(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        noise: ClientNoise,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Mean cross-entropy per client over the unmasked samples of its batch: ``[C]``."""
        return masked_cross_entropy(self.logits(params, x, noise, generator), y, mask)

    def logits(
        self, params: torch.Tensor, x: torch.Tensor, noise: ClientNoise, generator: torch.Generator
    ) -> torch.Tensor:
        """Class logits ``[C, B, K]`` of ``C`` parameter vectors on their own batches ``x [C, B, Q]``."""
        weights, readout = self.spec.split(params)
        return self.spec.logits(self.backend.expvals(weights, x, noise, generator), readout)

    def _sample_batch(self, rows: torch.Tensor, generator: torch.Generator) -> Batch:
        padding = self._padding[rows]
        keys = torch.rand(padding.shape, generator=generator, dtype=self._x.dtype)
        keys.masked_fill_(padding, 2.0)
        order = keys.argsort(dim=1)[:, : self._batch]
        index = (rows[:, None], order)
        states = None if self._states is None else self._states[index]
        return Batch(self._x[index], self._y[index], self._batch_mask[rows], states)

    def loss_and_grad(
        self, params: torch.Tensor, batch: Batch, noise: ClientNoise, generator: Generators
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backend's ``loss_and_grad`` of ``params [C, P]`` on ``batch`` (its prepared inputs included)."""
        extra = {} if batch.states is None else {"states": batch.states}
        return self.backend.loss_and_grad(params, batch.x, batch.y, batch.mask, noise, generator, **extra)

    def fit(
        self, global_params: torch.Tensor, client_ids: np.ndarray, fit: FitConfig, generator: torch.Generator
    ) -> FitResult:
        """Train ``client_ids`` locally from ``global_params`` (``[P]``) as the server instructed.

        Every client starts from the global model with a fresh optimizer, runs ``fit.local_steps`` minibatch
        steps on its own data (without replacement within a step), and adds FedProx's proximal term when
        ``fit.proximal_mu > 0``. (:func:`qflgym.qfl_core.batched.train_jointly` runs several
        :class:`LocalTraining` of several federations in shared backend calls.)
        """
        training = LocalTraining(self, global_params, client_ids, fit, generator)
        while not training.done:
            batch = training.next_batch()
            training.apply(batch, *self.loss_and_grad(training.params, batch, training.noise, generator))
        return training.result()


class LocalTraining:
    """One round of local training of some clients of a :class:`ClientPool`, one minibatch step at a time.

    Args:
        pool: The clients' pool.
        global_params: ``[P]`` the global model every client starts from.
        client_ids: The clients that train.
        fit: The server's instructions (lr, local steps, proximal term).
        generator: The federation's generator (minibatches are drawn from it).
    """

    def __init__(
        self,
        pool: ClientPool,
        global_params: torch.Tensor,
        client_ids: np.ndarray,
        fit: FitConfig,
        generator: torch.Generator,
    ) -> None:
        self.pool = pool
        self.global_params = global_params
        self.client_ids = client_ids
        self.fit = fit
        self.generator = generator
        self.rows = torch.as_tensor(client_ids, dtype=torch.long)
        self.noise = pool.noise(client_ids)
        self.params = global_params.expand(len(client_ids), -1).clone()
        self.optimizer = pool.optimizer_cls(self.params, fit.lr)
        self.steps_done = 0
        self.first_batch: Batch | None = None
        self.loss_before: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        """True once every local step has run."""
        return self.steps_done >= self.fit.local_steps

    def next_batch(self) -> Batch:
        """Draw the next minibatch of every training client."""
        return self.pool._sample_batch(self.rows, self.generator)

    def apply(self, batch: Batch, loss: torch.Tensor, grad: torch.Tensor) -> None:
        """One optimizer step from the clients' ``loss [C]`` and ``grad [C, P]`` on ``batch``."""
        fit = self.fit
        if fit.proximal_mu > 0:  # the gradient of 0.5 * mu * |params - global|^2
            grad = grad + fit.proximal_mu * (self.params - self.global_params)
        if self.first_batch is None:
            self.first_batch, self.loss_before = batch, loss
        self.params = self.optimizer.step(self.params, grad)
        self.steps_done += 1

    def result(self) -> FitResult:
        """The outcome once :attr:`done`."""
        if not self.done or self.first_batch is None or self.loss_before is None:
            raise RuntimeError(f"local training ran {self.steps_done} of {self.fit.local_steps} steps")
        pool, ids = self.pool, self.client_ids
        per_step = np.minimum(pool.sizes[ids], pool.batch)
        samples = per_step * self.fit.local_steps
        executions = samples * pool._executions_per_sample
        return FitResult(
            client_ids=ids,
            params=self.params,
            loss_before=self.loss_before,
            first_batch=self.first_batch,
            noise=self.noise,
            num_examples=pool._sizes[self.rows],
            samples_used=samples,
            circuit_executions=executions,
            shots_used=executions * pool._shots[ids],
            wall_time_s=executions * pool._latency[ids],
        )
