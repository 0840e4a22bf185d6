"""``ControlledStrategy``: a Flower strategy whose selection, lr, local steps and stopping come from a controller.

It wraps any Flower strategy of the Message API (``flwr.serverapp.strategy``: ``FedAvg``, ``FedProx``,
``FedAdam``, ...), the API flwr 1.42 recommends (the ``flwr.server.strategy`` classes with ``configure_fit`` are
the deprecated legacy API). The wrapped strategy keeps the message content it configures (e.g. FedProx's
``"proximal-mu"``) and all aggregation; the controller decides, in :meth:`ControlledStrategy.configure_train`,

* which clients train (the messages go to their nodes),
* the ``"lr"`` and ``"local-steps"`` in the train config,
* whether to stop (no messages; :meth:`ControlledStrategy.start` ends the run).

The controller is any qflgym controller (heuristic, SB3 model, LLM policy: anything with
``predict(obs, state, episode_start, deterministic)``). Its observation is computed by the qflgym env it was
built for, running on a :class:`~.mirror.FederationMirror` filled from what the server learns from Flower:
client properties (:data:`~.protocol.CLIENT_PROPERTIES`, queried once per node), train reply metrics
(:data:`~.protocol.TRAIN_METRICS`), update norms and cosines computed from the reply arrays, and the central
evaluation (:data:`~.protocol.EVALUATE_METRICS`). Layout and scaling are therefore the env's own.

A changing pool: a client whose node is not connected is ``available = 0`` in the observation (what masking
controllers read); if the controller selects it anyway it counts as dropped, as an offline client does in
``Federation.run_round``. Nodes that join are queried and their static features added.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from qflgym.agents.evaluation import Episode, episode_metrics
from qflgym.agents.evaluation.episodes import _Accumulator as TraceAccumulator
from qflgym.envs.rules import SELECTION_RULES
from qflgym.qfl_core.federation import ClientReport, RoundReport

from .mirror import FederationMirror, mirror_env
from .protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    PROPERTIES_KEY,
    ClientInfo,
    arrays_to_params,
    read_metrics,
    read_properties,
    read_train_metrics,
)

__all__ = ["ControlledStrategy"]

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class ControlledStrategy(Strategy):
    """Run a Flower strategy under a qflgym controller.

    Args:
        strategy: The wrapped Flower strategy (Message API); it must configure training (``fraction_train > 0``).
        env_id: The qflgym env the controller was made for (``QFL/ClientSelection-v0``, ...): its observation
            layout, action codec, fixed lr / local steps, round budget and target apply.
        controller: The controller, or a factory ``controller(env) -> controller`` given the env (e.g.
            ``lambda env: make_controller("power-of-choice", env, seed=0)``).
        evaluate_fn: Central evaluation ``evaluate_fn(server_round, arrays) -> MetricRecord`` with
            :data:`~.protocol.EVALUATE_METRICS` (required: the observation needs validation accuracy and loss).
        env_config: Overrides of the env config (as for ``gym.make(env_id, config=...)``).
        seed: The env's ``reset`` seed (its federation seed is drawn from it, unless the config fixes one).
        deterministic: Passed to ``predict``.
        timeout: Seconds to wait for query replies, and for ``min_nodes`` nodes to connect.
        min_nodes: Nodes that must be connected before the first round (default N, the env's clients).
    """

    def __init__(
        self,
        strategy: Strategy,
        env_id: str,
        controller: Any,
        evaluate_fn: EvaluateFn,
        env_config: dict[str, Any] | None = None,
        seed: int | None = 0,
        deterministic: bool = True,
        timeout: float = 3600.0,
        min_nodes: int | None = None,
    ) -> None:
        if getattr(strategy, "fraction_train", 1.0) == 0.0:
            raise ValueError("strategy: the wrapped strategy must configure training (fraction_train > 0)")
        self.strategy = strategy
        self.env = mirror_env(env_id, env_config)
        self.env.mirror_source = self._mirror
        self.controller = controller if hasattr(controller, "predict") else controller(self.env)
        self.evaluate_fn = evaluate_fn
        self.seed = seed
        self.deterministic = deterministic
        self.timeout = timeout
        self.n_clients = int(self.env.n_clients)
        self.min_nodes = self.n_clients if min_nodes is None else int(min_nodes)
        self.episode = Episode(seed=seed)
        self.done = False
        self.selections: list[tuple[int, ...]] = []
        self._grid: Grid | None = None
        self._arrays: ArrayRecord | None = None
        self._clients: dict[int, ClientInfo] = {}
        self._client_of_node: dict[int, int] = {}
        self._node_of_client: dict[int, int] = {}
        self._mirror_fed: FederationMirror | None = None
        self._accumulator = TraceAccumulator()
        self._obs: Any = None
        self._state: Any = None
        self._episode_start = np.ones(1, dtype=bool)
        self._round: dict[str, Any] | None = None
        self._last_metrics: MetricRecord | None = None

    # ------------------------------------------------------------------------------------------- the pool
    @property
    def federation_seed(self) -> int | None:
        """The seed of the federation of this run (known after the first ``configure_train``)."""
        return None if self._mirror_fed is None else self._mirror_fed.seed

    def _query(self, node_ids: list[int], seed: int) -> None:
        """Ask the nodes ``node_ids`` for their properties and record which client each one is."""
        assert self._grid is not None
        content = RecordDict({CONFIG_KEY: ConfigRecord({"federation-seed": int(seed)})})
        messages = [Message(content=content, message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
        for reply in self._grid.send_and_receive(messages, timeout=self.timeout):
            if reply.has_error():
                log(INFO, "properties query: node %d failed: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            info = read_properties(reply.content[PROPERTIES_KEY])
            node = reply.metadata.src_node_id
            self._clients[info.client_id] = info
            self._client_of_node[node] = info.client_id
            self._node_of_client[info.client_id] = node

    def _sync_pool(self) -> None:
        """Query new nodes and mark the clients whose node is connected as available."""
        assert self._grid is not None and self._mirror_fed is not None
        nodes = list(self._grid.get_node_ids())
        new = [n for n in nodes if n not in self._client_of_node]
        if new:
            self._query(new, self._mirror_fed.seed)
            self._mirror_fed.set_clients(self._clients)
            self.env.refresh_static_features()
        available = np.zeros(self.n_clients, dtype=bool)
        for node in nodes:
            if node in self._client_of_node:
                available[self._client_of_node[node]] = True
        self._mirror_fed.available = available

    def _mirror(self, federation_seed: int) -> FederationMirror:
        """Build the env's federation for ``federation_seed`` (called by ``env.reset``)."""
        assert self._grid is not None and self._arrays is not None
        self._query(list(self._grid.get_node_ids()), federation_seed)
        evaluation = self._evaluate(0, self._arrays)
        self._mirror_fed = FederationMirror(
            self.env.config.federation,
            federation_seed,
            self.n_clients,
            self._clients,
            arrays_to_params(self._arrays).nbytes,
            evaluation,
        )
        self._sync_pool()
        return self._mirror_fed

    def _evaluate(self, server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        record = self.evaluate_fn(server_round, arrays)
        if record is None:
            raise ValueError("evaluate_fn returned None; it must return the metrics of EVALUATE_METRICS")
        self._last_metrics = record
        values = read_metrics(record, ("val-accuracy", "val-loss"), ("val-accuracy", "val-loss"), "evaluate_fn")
        test = {k: float(record[k]) if k in record else math.nan for k in ("test-accuracy", "test-loss")}
        return {
            "val_accuracy": values["val-accuracy"],
            "val_loss": values["val-loss"],
            "test_accuracy": test["test-accuracy"],
            "test_loss": test["test-loss"],
        }

    def _start(self, grid: Grid, arrays: ArrayRecord) -> None:
        deadline = time.monotonic() + self.timeout
        while len(list(grid.get_node_ids())) < self.min_nodes:  # simulated nodes register asynchronously
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than min_nodes={self.min_nodes} nodes connected within {self.timeout} s")
            time.sleep(0.2)
        self._grid, self._arrays = grid, arrays
        self._obs, info = self.env.reset(seed=self.seed)
        self.episode.trace.append(self._accumulator.record(0, info, 0.0))

    # ---------------------------------------------------------------------------------------------- train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask the controller for this round's decision and send the train messages to its selection."""
        if self._mirror_fed is None:
            self._start(grid, arrays)
        if self.done:
            return []
        self._grid, self._arrays = grid, arrays
        masked = getattr(self.controller, "uses_action_masks", False)
        kwargs = {"action_masks": self.env.action_masks()} if masked else {}
        action, self._state = self.controller.predict(
            self._obs, state=self._state, episode_start=self._episode_start, deterministic=self.deterministic, **kwargs
        )
        self._episode_start = np.zeros(1, dtype=bool)
        decision = self.env.action_codec.decode(action)
        if decision.stop:
            self._step(action, None)
            return []
        selected = decision.selected
        if selected is None:  # the env's selection rule decides; draw it from a copy so env.step draws the same
            rule = SELECTION_RULES.get(self.env.config.selection_rule)
            selected = rule(self.env.client_state, self.env.config.k, copy.deepcopy(self.env.np_random))
        ids = tuple(np.flatnonzero(np.asarray(selected, dtype=bool)).tolist())
        lr = self.env.config.fixed_lr if decision.lr is None else float(decision.lr)
        steps = self.env.config.fixed_local_steps if decision.local_steps is None else int(decision.local_steps)
        self.selections.append(ids)
        log(INFO, "ControlledStrategy: the controller selects clients %s, lr %.4g, %d local steps", ids, lr, steps)
        self._round = {"action": action, "selected": ids, "lr": lr, "local_steps": steps, "arrays": arrays}
        configured = list(self.strategy.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid))
        if not configured:
            raise RuntimeError("the wrapped strategy configured no training messages this round")
        content = configured[0].content
        train_config = ConfigRecord(dict(content[self.strategy.configrecord_key]))
        train_config.update({"lr": lr, "local-steps": steps, "federation-seed": self._mirror_fed.seed})
        record = RecordDict({self.strategy.arrayrecord_key: content[self.strategy.arrayrecord_key]})
        record[self.strategy.configrecord_key] = train_config
        nodes = [self._node_of_client[c] for c in ids if self._mirror_fed.available[c]]
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in nodes]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with the wrapped strategy, then let the env observe the round."""
        if self._round is None:
            return None, None
        valid = []
        for reply in replies:
            if reply.has_error():
                log(INFO, "train: node %d failed: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            cid = self._client_of_node.get(reply.metadata.src_node_id)
            if cid is None or cid not in self._round["selected"]:
                raise RuntimeError(f"train reply from node {reply.metadata.src_node_id}, which was not selected")
            valid.append((cid, reply))
        valid.sort(key=lambda item: item[0])  # a fixed aggregation order: results do not depend on reply order
        arrays, metrics = self.strategy.aggregate_train(server_round, [reply for _, reply in valid])
        new_arrays = self._round["arrays"] if arrays is None else arrays
        evaluation = self._evaluate(server_round, new_arrays)
        report = self._report(server_round, valid, new_arrays, evaluation)
        self._mirror_fed.expect_round(report)
        self._sync_pool()
        self._step(self._round["action"], report)
        self._round = None
        return arrays, metrics

    def _report(
        self, server_round: int, valid: list[tuple[int, Message]], new_arrays: ArrayRecord, evaluation: dict[str, float]
    ) -> RoundReport:
        """The round as ``Federation.run_round`` would have reported it."""
        fed, rnd = self._mirror_fed, self._round
        previous = arrays_to_params(rnd["arrays"])
        global_update = arrays_to_params(new_arrays) - previous
        global_norm = float(np.linalg.norm(global_update))
        clients = []
        for cid, reply in valid:
            m = read_train_metrics(reply.content[METRICS_KEY])
            if int(m["client-id"]) != cid:
                raise ValueError(f"train metrics: client-id {int(m['client-id'])} from the node of client {cid}")
            update = arrays_to_params(reply.content[ARRAYS_KEY]) - previous
            norm = float(np.linalg.norm(update))
            denom = norm * global_norm
            clients.append(
                ClientReport(
                    client_id=cid,
                    loss_before=m["train-loss"],
                    loss_after=m["loss-after"],
                    update_norm=norm,
                    update_cosine=float(update @ global_update) / denom if denom > 0 else 0.0,
                    samples_used=int(m["samples-used"]),
                    circuit_executions=int(m["circuit-executions"]),
                    shots_used=int(m["shots-used"]),
                    wall_time_s=m["wall-time-s"],
                )
            )
        participants = tuple(c.client_id for c in clients)
        return RoundReport(
            round=server_round,
            selected=rnd["selected"],
            participants=participants,
            dropped=tuple(c for c in rnd["selected"] if c not in participants),
            lr=rnd["lr"],
            local_steps=rnd["local_steps"],
            val_accuracy=evaluation["val_accuracy"],
            val_loss=evaluation["val_loss"],
            test_accuracy=evaluation["test_accuracy"],
            test_loss=evaluation["test_loss"],
            bytes_uploaded=fed.param_bytes * len(clients),
            bytes_downloaded=fed.param_bytes * len(clients),
            shots_used=sum(c.shots_used for c in clients),
            circuit_executions=sum(c.circuit_executions for c in clients),
            wall_time_s=max((c.wall_time_s for c in clients), default=0.0) + fed.config.server_time_s,
            global_update_norm=global_norm,
            clients=tuple(clients),
        )

    def _step(self, action: Any, report: RoundReport | None) -> None:
        """Step the env with the round's action (it reads ``report`` through the mirror) and record it."""
        self._obs, reward, terminated, truncated, info = self.env.step(action)
        ep = self.episode
        ep.steps += 1
        ep.total_return += float(reward)
        if report is not None:
            ep.rounds += 1
            ep.trace.append(self._accumulator.record(ep.rounds, info, float(reward), report))
        elif ep.trace:
            ep.trace[-1]["reward"] += float(reward)
        if terminated or truncated:
            ep.terminated, ep.truncated = bool(terminated), bool(truncated)
            self.done = True

    # ------------------------------------------------------------------------------------------- evaluate
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation as the wrapped strategy configures it."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Federated evaluation as the wrapped strategy aggregates it."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Log the wrapped strategy and the controller."""
        log(INFO, "\t├──> Controller: %s on %s", type(self.controller).__name__, type(self.env).__name__)
        self.strategy.summary()

    # ---------------------------------------------------------------------------------------------- start
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int | None = None,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Run rounds until the controller stops, the env's target or budget ends the episode, or ``num_rounds``.

        The arguments are those of ``Strategy.start``; ``num_rounds`` defaults to the env's round budget and
        ``evaluate_fn`` must be left unset (the strategy evaluates with its own, every round). The finished
        episode is :attr:`episode` (the trace and metrics ``qflgym bench`` reports).
        """
        if evaluate_fn is not None:
            raise ValueError("evaluate_fn: ControlledStrategy evaluates with the evaluate_fn it was built with")
        num_rounds = int(self.env.config.round_budget) if num_rounds is None else int(num_rounds)
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        self.summary()
        began = time.perf_counter()
        self._start(grid, initial_arrays)
        result = Result()
        result.evaluate_metrics_serverapp[0] = self._last_metrics
        result.arrays = arrays = initial_arrays
        for server_round in range(1, num_rounds + 1):
            messages = self.configure_train(server_round, arrays, train_config, grid)
            if self.done and self._round is None:  # the controller stopped: no round
                break
            replies = grid.send_and_receive(messages, timeout=timeout)
            new_arrays, train_metrics = self.aggregate_train(server_round, replies)
            result.evaluate_metrics_serverapp[server_round] = self._last_metrics
            if new_arrays is not None:
                result.arrays = arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            replies = grid.send_and_receive(
                self.configure_evaluate(server_round, arrays, evaluate_config, grid), timeout=timeout
            )
            evaluate_metrics = self.aggregate_evaluate(server_round, replies)
            if evaluate_metrics is not None:
                result.evaluate_metrics_clientapp[server_round] = evaluate_metrics
            if self.done:
                break
        metrics = getattr(self.controller, "episode_metrics", None)
        if callable(metrics):
            self.episode.extra = {str(k): float(v) for k, v in (metrics() or {}).items()}
        self.episode.runtime_s = time.perf_counter() - began
        return result

    def episode_row(self) -> dict[str, float]:
        """The finished episode's metrics, as one ``qflgym bench`` results row (without the labels)."""
        return episode_metrics(self.episode, self.env.config.target_accuracy)
