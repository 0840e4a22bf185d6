"""Run a qflgym federation in Flower, driven by a controller: on Flower's Ray simulation or in this process.

:func:`run_flower` builds everything from an env id (and config overrides), a controller and a seed:

* the server side: the initial model and a central evaluator from ``Federation(config, federation_seed)``
  (the server holds the validation and test splits, as the env's federation does), the Flower strategy that
  matches the federation's ``strategy`` config (:func:`flower_strategy`), and a :class:`ControlledStrategy`;
* the client side: :func:`~.client.make_client_app` of the same federation config, one node per client;
* the engine: ``flwr.simulation.run_simulation`` on Ray (``backend="ray"``, one virtual SuperNode per client),
  or :class:`LocalGrid`, which delivers messages to the ``ClientApp`` in this process (``backend="local"``,
  for tests and debugging: no Ray start-up).

It returns the :class:`ControlledStrategy` after the run: ``strategy.episode`` is the episode (the same trace
``qflgym bench`` records) and ``strategy.selections`` the selected client ids of every round.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Metadata
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi, Strategy
from flwr.supercore.task_identity import TaskIdentity

from qflgym.qfl_core.config import StrategyConfig
from qflgym.qfl_core.federation import Federation

from .client import make_client_app
from .protocol import arrays_to_params, metric_record, params_to_arrays
from .strategy import ControlledStrategy

__all__ = ["LocalGrid", "central_evaluator", "federation_seed", "flower_strategy", "run_flower"]

#: Sampling settings of the wrapped strategies: the controller selects, so Flower never waits for a minimum
#: pool, and federated (client-side) evaluation is off: the server evaluates centrally.
_SAMPLING = {"min_train_nodes": 1, "min_available_nodes": 1, "fraction_evaluate": 0.0, "min_evaluate_nodes": 0}


def flower_strategy(config: StrategyConfig) -> Strategy:
    """The Flower strategy for a qflgym ``strategy`` config.

    ``fedavg`` and ``fedprox`` aggregate exactly as qflgym does. Flower's adaptive strategies (``fedadam``,
    ``fedyogi``, ``fedadagrad``) take the same ``server_lr`` (``eta``), ``tau`` and betas but apply Flower's
    own update (FedAdam with bias correction), so they do not reproduce qflgym's numbers.

    Raises:
        ValueError: Naming the allowed strategies when the name has no Flower counterpart.
    """
    adaptive = {"eta": config.server_lr, "tau": config.tau, "eta_l": 1.0}
    betas = {"beta_1": config.beta_1, "beta_2": config.beta_2}
    factories = {
        "fedavg": lambda: FedAvg(**_SAMPLING),
        "fedprox": lambda: FedProx(proximal_mu=config.proximal_mu, **_SAMPLING),
        "fedadam": lambda: FedAdam(**adaptive, **betas, **_SAMPLING),
        "fedyogi": lambda: FedYogi(**adaptive, **betas, **_SAMPLING),
        "fedadagrad": lambda: FedAdagrad(**adaptive, **_SAMPLING),
    }
    if config.name not in factories:
        raise ValueError(f"strategy.name: {config.name!r} has no Flower counterpart; allowed: {', '.join(factories)}")
    return factories[config.name]()


def central_evaluator(federation: Federation) -> Any:
    """Flower's ``evaluate_fn`` evaluating a model on ``federation``'s validation (and test) split."""

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        federation.params = torch.as_tensor(arrays_to_params(arrays), dtype=federation.dtype)
        result = federation.evaluate()
        return metric_record({k.replace("_", "-"): v for k, v in result.items()})

    return evaluate


def federation_seed(env_config: Any, seed: int | None) -> int:
    """The federation seed a qflgym env uses after ``reset(seed=seed)`` (its config's, else drawn from ``seed``)."""
    from gymnasium.utils import seeding

    if env_config.federation_seed is not None:
        return int(env_config.federation_seed)
    rng, _ = seeding.np_random(seed)
    return int(rng.integers(2**31 - 1))


class LocalGrid(Grid):
    """A Flower ``Grid`` that delivers messages to a ``ClientApp`` in this process, one node per client.

    Node ``node_ids[i]`` has ``node_config = {"partition-id": i, "num-partitions": n}``. :meth:`disconnect`
    and :meth:`connect` change the pool between rounds.

    Args:
        client_app: The ``ClientApp`` every node runs.
        n_nodes: Number of nodes.
        first_node_id: Id of node 0 (ids are consecutive; they differ from the partition ids on purpose).
    """

    def __init__(self, client_app: ClientApp, n_nodes: int, first_node_id: int = 101) -> None:
        # Flower stamps new messages with the identity of the running task (set by its runtimes).
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 0, SUPERLINK_NODE_ID, 0
        self.client_app = client_app
        self.node_ids = [first_node_id + i for i in range(n_nodes)]
        self.connected = set(self.node_ids)
        self.contexts = {
            node: Context(
                run_id=0,
                node_id=node,
                node_config={"partition-id": i, "num-partitions": n_nodes},
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(self.node_ids)
        }
        self.sent: list[Message] = []
        self._ids = itertools.count(1)
        self._replies: dict[str, Message] = {}

    def disconnect(self, node_id: int) -> None:
        """Take ``node_id`` out of the pool (messages to it fail)."""
        self.connected.discard(node_id)

    def connect(self, node_id: int) -> None:
        """Bring ``node_id`` back."""
        self.connected.add(node_id)

    def set_run(self, run_id: int) -> None:
        """Unused: one run per grid."""

    @property
    def run(self) -> Any:
        """Unused: one run per grid."""
        return None

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        """A message to ``dst_node_id``."""
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """The connected nodes, in id order."""
        return sorted(self.connected)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver every message now and keep the replies (a node outside the pool replies with an error)."""
        ids = []
        for message in messages:
            self.sent.append(message)
            meta = message.metadata
            message_id = str(next(self._ids))
            stamped = Message(
                metadata=Metadata(
                    run_id=0,
                    message_id=message_id,
                    src_node_id=SUPERLINK_NODE_ID,
                    dst_node_id=meta.dst_node_id,
                    reply_to_message_id="",
                    group_id=meta.group_id,
                    created_at=time.time(),
                    ttl=meta.ttl,
                    message_type=meta.message_type,
                ),
                content=message.content,
            )
            if meta.dst_node_id in self.connected:
                reply = self.client_app(stamped, self.contexts[meta.dst_node_id])
            else:
                reply = Message(Error(code=0, reason=f"node {meta.dst_node_id} is not connected"), reply_to=stamped)
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies to ``message_ids``."""
        return [self._replies.pop(i) for i in message_ids]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push and pull at once (delivery is synchronous)."""
        return self.pull_messages(self.push_messages(messages))


def run_flower(
    env_id: str,
    controller: Any,
    *,
    env_config: dict[str, Any] | None = None,
    seed: int = 0,
    backend: str = "ray",
    num_cpus: int | None = None,
    deterministic: bool = True,
    grid: LocalGrid | None = None,
) -> ControlledStrategy:
    """Run one episode of ``env_id`` as a Flower simulation driven by ``controller``.

    Args:
        env_id: A qflgym env id; its federation config defines the clients and the server's model.
        controller: A controller or a factory ``controller(env)`` (see :class:`ControlledStrategy`).
        env_config: Env config overrides.
        seed: The env's ``reset`` seed (as in ``qflgym bench``).
        backend: ``"ray"`` (Flower's simulation engine) or ``"local"`` (:class:`LocalGrid`).
        num_cpus: CPUs of the local Ray instance (default: all).
        deterministic: Passed to ``predict``.
        grid: With ``backend="local"``, the grid to run on (e.g. to change the pool; it must serve the
            federation's client app); default a fresh one.

    Raises:
        ValueError: Naming the allowed values when ``backend`` is unknown.
    """
    if backend not in ("ray", "local"):
        raise ValueError(f"backend: must be 'ray' or 'local', got {backend!r}")
    strategy, initial = _controlled(env_id, controller, env_config, seed, deterministic)
    fed_config = strategy.env.config.federation
    if backend == "local":
        grid = grid or LocalGrid(make_client_app(fed_config), strategy.n_clients)
        strategy.start(grid, initial)
        return strategy
    from flwr.simulation import run_simulation

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid, initial)

    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if num_cpus is not None:
        init_args["num_cpus"] = int(num_cpus)
    run_simulation(
        server_app=server_app,
        client_app=make_client_app(fed_config),
        num_supernodes=strategy.n_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args},
    )
    if strategy.episode.steps == 0 and not strategy.done:
        raise RuntimeError("the Flower simulation ended before the first round; see Flower's log above")
    return strategy


def _controlled(
    env_id: str, controller: Any, env_config: dict[str, Any] | None, seed: int, deterministic: bool
) -> tuple[ControlledStrategy, ArrayRecord]:
    """The strategy and initial model of a run (the server's federation evaluates centrally)."""
    from .mirror import mirror_env

    config = mirror_env(env_id, env_config).config
    server = Federation(config.federation, federation_seed(config, seed))
    initial = params_to_arrays(server.params)
    strategy = ControlledStrategy(
        flower_strategy(config.federation.strategy),
        env_id,
        controller,
        central_evaluator(server),
        env_config=env_config,
        seed=seed,
        deterministic=deterministic,
    )
    return strategy, initial
