"""A Flower ``ClientApp`` that is one qflgym quantum client: its data shard, device profile and local training.

``make_client_app(federation)`` returns a ``ClientApp`` for Flower's simulation (or a real SuperNode): the
node with ``node_config["partition-id"] = i`` is client ``i`` of ``Federation(federation, seed)``, where the
seed comes with every message (``"federation-seed"``). The client

* answers **query** messages with its properties (:data:`~.protocol.CLIENT_PROPERTIES`): data size, label
  histogram, shots, noise and latency of its device;
* answers **train** messages by running :meth:`ClientPool.fit <qflgym.qfl_core.clients.ClientPool.fit>` on its
  own shard from the received global model, with the received ``lr``, ``local-steps`` and ``proximal-mu``
  (FedProx), and replies with the trained model and :data:`~.protocol.TRAIN_METRICS`.

Randomness: a Flower client trains on its own, so it draws its minibatches and shot noise from its own
``torch.Generator``, seeded from ``(federation seed, server round, client id)`` -- reproducible, and
independent of which other clients train. ``Federation.run_round`` instead trains the selected clients in one
batched call from one shared generator; the two agree exactly (to float rounding) when local training draws
no randomness: exact expectations (``shots: null``) and every client's shard no larger than the batch size
(each step then sees the whole shard). With shots or minibatch sampling the Flower run is a statistically
equivalent run with other draws.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from qflgym.qfl_core.federation import Federation, FederationLike, resolve_config
from qflgym.qfl_core.strategies import FitConfig

from .protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PROPERTIES_KEY,
    arrays_to_params,
    params_to_arrays,
    properties_record,
)

__all__ = ["client_generator", "make_client_app"]

_CACHE_SIZE = 4


def client_generator(federation_seed: int, server_round: int, client_id: int) -> torch.Generator:
    """The generator a client trains with in round ``server_round``."""
    seed = np.random.default_rng([int(federation_seed), int(server_round), int(client_id)]).integers(2**62)
    return torch.Generator().manual_seed(int(seed))


class _Federations:
    """The federations this process has built, by ``(config, seed)`` (a Ray actor serves many clients)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self._key = json.dumps(config, sort_keys=True)
        self._built: OrderedDict[tuple[str, int], Federation] = OrderedDict()

    def get(self, seed: int) -> Federation:
        key = (self._key, int(seed))
        fed = self._built.get(key)
        if fed is None:
            fed = self._built[key] = Federation(self.config, int(seed))
            while len(self._built) > _CACHE_SIZE:
                self._built.popitem(last=False)
        return fed


def _client_id(context: Context, fed: Federation) -> int:
    try:
        cid = int(context.node_config["partition-id"])
    except KeyError:
        raise ValueError("node_config lacks 'partition-id' (the qflgym client index of this node)") from None
    if not 0 <= cid < fed.n_clients:
        raise ValueError(f"node_config partition-id: must be in [0, {fed.n_clients - 1}], got {cid}")
    return cid


def _seed(config: ConfigRecord) -> int:
    if "federation-seed" not in config:
        raise ValueError("message config lacks 'federation-seed' (the seed of the qflgym federation)")
    return int(config["federation-seed"])


def _fit_config(config: ConfigRecord) -> FitConfig:
    lr = float(config.get("lr", math.nan))
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"train config lr: must be a finite positive number, got {config.get('lr')!r}")
    steps = config.get("local-steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train config local-steps: must be an integer >= 1, got {steps!r}")
    mu = float(config.get("proximal-mu", 0.0))
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"train config proximal-mu: must be a finite number >= 0, got {mu!r}")
    return FitConfig(lr=lr, local_steps=steps, proximal_mu=mu)


def make_client_app(federation: FederationLike) -> ClientApp:
    """A ``ClientApp`` whose node ``partition-id = i`` is client ``i`` of the qflgym federation.

    Args:
        federation: A federation preset name, config dict or ``FederationConfig`` (the clients' data, devices
            and training setup; the seed arrives with each message).
    """
    federations = _Federations(resolve_config(federation).model_dump(mode="json"))
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        fed = federations.get(_seed(message.content[CONFIG_KEY]))
        cid = _client_id(context, fed)
        record = properties_record(cid, fed.client_stats[cid].label_histogram, fed.profiles[cid])
        return Message(RecordDict({PROPERTIES_KEY: record}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        config = message.content[CONFIG_KEY]
        seed = _seed(config)
        fed = federations.get(seed)
        cid = _client_id(context, fed)
        params = torch.as_tensor(arrays_to_params(message.content[ARRAYS_KEY]), dtype=fed.dtype)
        if params.shape != (fed.n_params,):
            raise ValueError(f"arrays: expected {fed.n_params} parameters, got {tuple(params.shape)}")
        generator = client_generator(seed, int(config.get("server-round", 0)), cid)
        fit = fed.pool.fit(params, np.array([cid]), _fit_config(config), generator)
        with torch.no_grad():
            first = fit.first_batch
            loss_after = fed.pool.loss(fit.params, first.x, first.y, first.mask, fit.noise, generator)
        metrics = MetricRecord(
            {
                "client-id": cid,
                "num-examples": int(fit.num_examples[0]),
                "train-loss": float(fit.loss_before[0]),
                "loss-after": float(loss_after[0]),
                "samples-used": int(fit.samples_used[0]),
                "circuit-executions": int(fit.circuit_executions[0]),
                "shots-used": int(fit.shots_used[0]),
                "wall-time-s": float(fit.wall_time_s[0]),
            }
        )
        content = RecordDict({ARRAYS_KEY: params_to_arrays(fit.params[0]), METRICS_KEY: metrics})
        return Message(content, reply_to=message)

    return app
