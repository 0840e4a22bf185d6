"""Heuristic controllers: client selection, step-size schedules and termination rules from the FL literature.

A heuristic controller is a :class:`HeuristicController` composed of three rules, one per knob:

* a **selection rule** (:data:`SELECTION_RULES`): ``all-clients``, ``random-k``, ``round-robin``,
  ``power-of-choice``, ``oort``, ``loss-greedy``;
* a **step-size rule** (:data:`STEP_SIZE_RULES`): ``constant-lr``, ``step-decay``, ``cosine-lr``;
* a **termination rule** (:data:`TERMINATION_RULES`): ``never``, ``patience``, ``target-reached``.

It reads the observation through the env's :class:`~qflgym.envs.observation.ObservationLayout` and emits the
action through the env's ``action_codec.encode(ControlDecision(...))``, so the same controller works on every
qflgym env: knobs an env does not expose are ignored by its codec (a selection rule on ``QFL/StepSize-v0`` has
no effect; the env applies its own configured selection).

Every rule is also registered as a controller of its own name in
:data:`~qflgym.agents.controllers.CONTROLLERS`, with the env's defaults for the other two knobs (all clients,
the configured learning rate and local steps, never stop), and ``composite`` combines any three::

    make_controller("power-of-choice", env, seed=0, k=3, d=6)
    make_controller("composite", env, seed=0, selection="oort", selection_kwargs={"k": 3},
                    step_size="cosine-lr", termination="patience", termination_kwargs={"patience": 5})

Randomized rules draw from the controller's own ``numpy.random.Generator`` (seeded by ``seed=``); ties between
equal scores are broken at random with the same generator, so a seeded controller is reproducible.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qflgym.agents.controllers import CONTROLLERS, Controller, env_attr
from qflgym.registry import Registry

__all__ = [
    "SELECTION_RULES",
    "STEP_SIZE_RULES",
    "TERMINATION_RULES",
    "AllClients",
    "ConstantLR",
    "CosineLR",
    "EnvFacts",
    "HeuristicController",
    "LossGreedy",
    "NeverStop",
    "ObsView",
    "OortLike",
    "Patience",
    "PowerOfChoice",
    "RandomK",
    "RoundRobin",
    "StepDecay",
    "TargetReached",
]


# ------------------------------------------------------------------------------------------------ env facts
@dataclass(frozen=True)
class EnvFacts:
    """What a heuristic needs to know about an env besides its observation.

    Attributes:
        n_clients: Number of clients N.
        clients_per_round: The default k of selection rules: the env's selection budget when its actions have
            one (``selection_budget``), else its ``clients_per_round`` (``ceil(0.3 N)`` by default).
        max_clients: Most clients an action may select (the selection budget, else N).
        default_lr: The learning rate the env uses when the controller does not set one.
        default_local_steps: The local steps the env uses when the controller does not set them.
        max_rounds: Round budget of an episode.
        target: Target validation accuracy of the env, or None.
    """

    n_clients: int
    clients_per_round: int
    max_clients: int
    default_lr: float
    default_local_steps: int
    max_rounds: int | None
    target: float | None

    @classmethod
    def from_env(cls, env: Any) -> EnvFacts:
        """Read the facts from a qflgym env (possibly wrapped or vectorized)."""
        config = env_attr(env, "config")
        codec = env_attr(env, "action_codec")
        n = int(config.n_clients)
        budget = getattr(codec, "k", None)
        return cls(
            n_clients=n,
            clients_per_round=int(budget) if budget is not None else int(config.k),
            max_clients=int(budget) if budget is not None else n,
            default_lr=float(config.fixed_lr),
            default_local_steps=int(config.fixed_local_steps),
            max_rounds=int(config.round_budget),
            target=None if config.target_accuracy is None else float(config.target_accuracy),
        )


# --------------------------------------------------------------------------------------------- observations
class ObsView:
    """Named access to one flat observation through the env's :class:`ObservationLayout`.

    Feature names are those of ``qflgym.envs.observation`` (``CLIENT_FEATURES``, ``GLOBAL_FEATURES``); their
    scaling is documented there (e.g. ``last_loss`` is divided by ``ln K`` and is 1 for clients that never
    trained, ``latency`` is relative to the slowest client, ``rounds_since_selected`` is a fraction of the
    round budget).

    Args:
        layout: The env's ``ObservationLayout``.
    """

    def __init__(self, layout: Any) -> None:
        self.layout = layout
        self.n_clients = int(layout.n_clients)
        self.client_features = frozenset(layout.client_features)
        self.global_features = frozenset(layout.global_features)
        self.obs: np.ndarray = np.zeros(0)

    def bind(self, obs: np.ndarray) -> ObsView:
        """Point the view at ``obs`` and return it."""
        self.obs = obs
        return self

    def has(self, name: str) -> bool:
        """Whether the observation carries the (client or global) feature ``name``."""
        return name in self.client_features or name in self.global_features

    def client(self, name: str) -> np.ndarray:
        """Per-client feature ``name`` as a ``[N]`` float array."""
        return np.asarray(self.layout.client(self.obs, name), dtype=np.float64)

    def global_(self, name: str) -> float:
        """Global feature ``name`` as a float."""
        return float(self.layout.global_(self.obs, name))

    def available(self) -> np.ndarray:
        """``[N]`` bool: clients available this round."""
        return self.client("available") > 0.5


def _top_k(scores: np.ndarray, candidates: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` among ``candidates`` (ties broken at random)."""
    candidates = np.asarray(candidates, dtype=int)
    if k >= len(candidates):
        return candidates
    tiebreak = rng.random(len(candidates))
    order = np.lexsort((tiebreak, -scores[candidates]))
    return candidates[order[:k]]


def _mask(n: int, idx: np.ndarray) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[np.asarray(idx, dtype=int)] = True
    return out


# ------------------------------------------------------------------------------------------------ selection
#: Client-selection rules by name: ``cls(facts, **kwargs)`` with ``select(view, memory, rng) -> bool [N]``.
SELECTION_RULES: Registry[type[SelectionRule]] = Registry("selection rule")


class SelectionRule(ABC):
    """Chooses which clients train this round.

    Args:
        facts: The env's :class:`EnvFacts`.
        k: Clients per round; default :attr:`EnvFacts.clients_per_round` (the env's selection budget, else its
            ``clients_per_round``).

    Raises:
        ValueError: ``k`` is outside ``[1, N]`` or above the env's selection budget.
    """

    def __init__(self, facts: EnvFacts, k: int | None = None) -> None:
        self.n = facts.n_clients
        k = facts.clients_per_round if k is None else k
        if not 1 <= int(k) <= facts.max_clients:
            limit = "N" if facts.max_clients == self.n else "the env's selection budget"
            raise ValueError(f"{type(self).__name__}: k must be in [1, {facts.max_clients}] ({limit}), got {k}")
        self.k = int(k)

    @abstractmethod
    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Return a ``[N]`` bool mask of the selected clients."""


@SELECTION_RULES.register("all-clients")
class AllClients(SelectionRule):
    """Full participation: every available client trains every round.

    Raises:
        ValueError: On envs whose actions have a selection budget below N (use a k-client rule there).
    """

    def __init__(self, facts: EnvFacts) -> None:
        super().__init__(facts, k=facts.n_clients)

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Select every available client."""
        return view.available().copy()


@SELECTION_RULES.register("random-k")
class RandomK(SelectionRule):
    """k clients drawn uniformly without replacement among the available ones (FedAvg's sampling)."""

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Draw k available clients uniformly."""
        avail = np.flatnonzero(view.available())
        chosen = rng.choice(avail, size=min(self.k, len(avail)), replace=False) if len(avail) else avail
        return _mask(self.n, chosen)


@SELECTION_RULES.register("round-robin")
class RoundRobin(SelectionRule):
    """Clients in a fixed cyclic order, k per round, skipping unavailable ones (the cursor persists)."""

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Take the next k available clients after the cursor."""
        cursor = memory.get("cursor", 0)
        avail = view.available()
        chosen: list[int] = []
        for step in range(self.n):
            i = (cursor + step) % self.n
            if avail[i]:
                chosen.append(i)
                if len(chosen) == self.k:
                    break
        if chosen:
            memory["cursor"] = (chosen[-1] + 1) % self.n
        return _mask(self.n, np.array(chosen, dtype=int))


@SELECTION_RULES.register("power-of-choice")
class PowerOfChoice(SelectionRule):
    """Power-of-Choice (Cho, Wang & Joshi, 2020): sample d candidates, keep the k with the highest local loss.

    Candidates are drawn without replacement with probability proportional to the clients' data size (the
    paper's ``p_k``); the loss is each client's last reported training loss (the communication-free
    ``rpow-d`` variant), so never-selected clients keep the env's initial loss value.

    Args:
        facts: The env's :class:`EnvFacts`.
        k: Clients per round.
        d: Candidate-set size, ``k <= d <= N``; default ``min(N, 2k)``.
    """

    def __init__(self, facts: EnvFacts, k: int | None = None, d: int | None = None) -> None:
        super().__init__(facts, k)
        d = min(self.n, 2 * self.k) if d is None else int(d)
        if not self.k <= d <= self.n:
            raise ValueError(f"d must be in [k={self.k}, N={self.n}], got {d}")
        self.d = d

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Sample d candidates by data size, keep the k with the highest last loss."""
        avail = np.flatnonzero(view.available())
        if len(avail) == 0:
            return np.zeros(self.n, dtype=bool)
        weights = view.client("data_size")[avail] if view.has("data_size") else np.ones(len(avail))
        weights = np.clip(weights, 1e-12, None)
        candidates = rng.choice(avail, size=min(self.d, len(avail)), replace=False, p=weights / weights.sum())
        memory["candidates"] = np.sort(candidates)
        return _mask(self.n, _top_k(view.client("last_loss"), candidates, self.k, rng))


@SELECTION_RULES.register("loss-greedy")
class LossGreedy(SelectionRule):
    """The k available clients with the highest last training loss (ties at random)."""

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Keep the k highest-loss available clients."""
        avail = np.flatnonzero(view.available())
        return _mask(self.n, _top_k(view.client("last_loss"), avail, self.k, rng))


@SELECTION_RULES.register("oort")
class OortLike(SelectionRule):
    """An Oort-like guided selection (Lai et al., OSDI 2021): statistical utility times a speed penalty.

    Utility of client i: ``size_i * loss_i`` (Oort's ``|B_i| sqrt(mean loss^2)`` with the last reported loss),
    plus Oort's staleness bonus ``sqrt(staleness_weight * log(R) / L_i)`` (``R`` the current round, ``L_i``
    the round the client was last selected, counted from 1), times the
    speed penalty ``(T / latency_i) ** alpha`` for clients slower than the preferred duration ``T`` (the
    ``pacer_quantile`` quantile of the available clients' latencies). A fraction ``epsilon`` of the k slots
    explores never-selected clients, fastest first; the rest exploit the highest utilities.

    Args:
        facts: The env's :class:`EnvFacts`.
        k: Clients per round.
        alpha: Exponent of the speed penalty (Oort's default is 2).
        epsilon: Fraction of the slots that explore never-selected clients.
        pacer_quantile: Quantile of latencies that sets the preferred round duration ``T``.
        staleness_weight: Weight of the staleness bonus (Oort uses 0.1).
    """

    def __init__(
        self,
        facts: EnvFacts,
        k: int | None = None,
        alpha: float = 2.0,
        epsilon: float = 0.2,
        pacer_quantile: float = 0.5,
        staleness_weight: float = 0.1,
    ) -> None:
        super().__init__(facts, k)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if not 0.0 < pacer_quantile <= 1.0:
            raise ValueError(f"pacer_quantile must be in (0, 1], got {pacer_quantile}")
        self.alpha, self.epsilon = float(alpha), float(epsilon)
        self.pacer_quantile, self.staleness_weight = float(pacer_quantile), float(staleness_weight)
        self.max_rounds = facts.max_rounds or 1

    def utility(self, view: ObsView, memory: dict[str, Any]) -> np.ndarray:
        """Oort-like utility ``[N]`` of every client (before exploration)."""
        size = view.client("data_size") if view.has("data_size") else np.ones(self.n)
        util = size * np.clip(view.client("last_loss"), 0.0, None)
        rnd = round(view.global_("round_fraction") * self.max_rounds) + 1  # R, 1-based
        if view.has("rounds_since_selected") and self.staleness_weight > 0 and rnd > 1:
            since = np.round(view.client("rounds_since_selected") * self.max_rounds)
            last = np.clip(rnd - since, 1.0, None)
            util = util + np.sqrt(self.staleness_weight * math.log(rnd) / last)
        if view.has("latency") and self.alpha > 0:
            latency = np.clip(view.client("latency"), 1e-12, None)
            avail = view.available()
            pref = np.quantile(latency[avail] if avail.any() else latency, self.pacer_quantile)
            util = util * np.where(latency > pref, (pref / latency) ** self.alpha, 1.0)
        return util

    def select(self, view: ObsView, memory: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Explore ``epsilon * k`` never-selected clients (fastest first), exploit the rest by utility."""
        avail = view.available()
        util = self.utility(view, memory)
        unexplored = (
            np.flatnonzero(avail & (view.client("times_selected") <= 0))
            if view.has("times_selected")
            else np.zeros(0, dtype=int)
        )
        n_explore = min(len(unexplored), round(self.epsilon * self.k))
        chosen: list[int] = []
        if n_explore:
            speed = -view.client("latency") if view.has("latency") else np.zeros(self.n)
            chosen.extend(_top_k(speed, unexplored, n_explore, rng).tolist())
        rest = np.array([i for i in np.flatnonzero(avail) if i not in set(chosen)], dtype=int)
        chosen.extend(_top_k(util, rest, self.k - len(chosen), rng).tolist())
        return _mask(self.n, np.array(chosen, dtype=int))


# ------------------------------------------------------------------------------------------------ step size
#: Step-size rules by name: ``cls(facts, **kwargs)`` with ``__call__(round) -> (lr, local_steps)``.
STEP_SIZE_RULES: Registry[type[StepSizeRule]] = Registry("step-size rule")


class StepSizeRule(ABC):
    """Chooses the learning rate and local steps of round ``t`` (0-based within the episode).

    Args:
        facts: The env's :class:`EnvFacts`.
        lr: Initial learning rate; default the federation's configured one.
        local_steps: Local steps per round; default the federation's configured ones.
    """

    def __init__(self, facts: EnvFacts, lr: float | None = None, local_steps: int | None = None) -> None:
        self.lr0 = float(facts.default_lr if lr is None else lr)
        self.local_steps = int(facts.default_local_steps if local_steps is None else local_steps)
        if self.lr0 <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr0}")
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be >= 1, got {self.local_steps}")

    @abstractmethod
    def __call__(self, t: int) -> tuple[float, int]:
        """Return ``(lr, local_steps)`` for round ``t``."""


@STEP_SIZE_RULES.register("constant-lr")
class ConstantLR(StepSizeRule):
    """The same learning rate and local steps every round."""

    def __call__(self, t: int) -> tuple[float, int]:
        """Return the constant ``(lr, local_steps)``."""
        return self.lr0, self.local_steps


@STEP_SIZE_RULES.register("step-decay")
class StepDecay(StepSizeRule):
    """``lr = lr0 * gamma ** (t // every)``: the learning rate drops by ``gamma`` every ``every`` rounds.

    Args:
        facts: The env's :class:`EnvFacts`.
        lr: Initial learning rate.
        local_steps: Local steps per round.
        gamma: Multiplicative decay, in (0, 1].
        every: Rounds between decays, >= 1.
    """

    def __init__(
        self,
        facts: EnvFacts,
        lr: float | None = None,
        local_steps: int | None = None,
        gamma: float = 0.5,
        every: int = 10,
    ) -> None:
        super().__init__(facts, lr, local_steps)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.gamma, self.every = float(gamma), int(every)

    def __call__(self, t: int) -> tuple[float, int]:
        """Return the decayed ``(lr, local_steps)`` of round ``t``."""
        return self.lr0 * self.gamma ** (t // self.every), self.local_steps


@STEP_SIZE_RULES.register("cosine-lr")
class CosineLR(StepSizeRule):
    """Cosine annealing from ``lr`` to ``lr_min`` over the episode's round budget.

    ``lr_t = lr_min + (lr0 - lr_min) * (1 + cos(pi * t / T)) / 2`` with ``T`` the round budget.

    Args:
        facts: The env's :class:`EnvFacts`.
        lr: Initial learning rate.
        local_steps: Local steps per round.
        lr_min: Final learning rate; default ``lr / 10``.
        rounds: Annealing horizon T; default the env's round budget.
    """

    def __init__(
        self,
        facts: EnvFacts,
        lr: float | None = None,
        local_steps: int | None = None,
        lr_min: float | None = None,
        rounds: int | None = None,
    ) -> None:
        super().__init__(facts, lr, local_steps)
        self.lr_min = self.lr0 / 10 if lr_min is None else float(lr_min)
        if not 0.0 <= self.lr_min <= self.lr0:
            raise ValueError(f"lr_min must be in [0, lr={self.lr0}], got {self.lr_min}")
        rounds = facts.max_rounds if rounds is None else rounds
        if rounds is None or rounds < 1:
            raise ValueError("cosine-lr needs rounds >= 1 (the env declares no round budget; pass rounds=)")
        self.rounds = int(rounds)

    def __call__(self, t: int) -> tuple[float, int]:
        """Return the annealed ``(lr, local_steps)`` of round ``t``."""
        frac = min(t, self.rounds) / self.rounds
        return self.lr_min + (self.lr0 - self.lr_min) * 0.5 * (1.0 + math.cos(math.pi * frac)), self.local_steps


# ------------------------------------------------------------------------------------------------ termination
#: Termination rules by name: ``cls(facts, **kwargs)`` with ``__call__(view, memory) -> bool``.
TERMINATION_RULES: Registry[type[TerminationRule]] = Registry("termination rule")


class TerminationRule(ABC):
    """Decides whether to stop training now (before running this round)."""

    def __init__(self, facts: EnvFacts) -> None:
        self.facts = facts

    @abstractmethod
    def __call__(self, view: ObsView, memory: dict[str, Any]) -> bool:
        """Return true to stop."""


@TERMINATION_RULES.register("never")
class NeverStop(TerminationRule):
    """Never stop: the episode runs until the env's target or round budget ends it."""

    def __call__(self, view: ObsView, memory: dict[str, Any]) -> bool:
        """Return False."""
        return False


@TERMINATION_RULES.register("patience")
class Patience(TerminationRule):
    """Early stopping: stop after ``patience`` rounds without a validation-accuracy gain above ``min_delta``.

    Args:
        facts: The env's :class:`EnvFacts`.
        patience: Rounds without improvement tolerated, >= 1.
        min_delta: Smallest gain that counts as an improvement.
    """

    def __init__(self, facts: EnvFacts, patience: int = 5, min_delta: float = 0.0) -> None:
        super().__init__(facts)
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.patience, self.min_delta = int(patience), float(min_delta)

    def __call__(self, view: ObsView, memory: dict[str, Any]) -> bool:
        """Update the best accuracy seen and stop once it has not improved for ``patience`` rounds."""
        acc = view.global_("val_accuracy")
        best = memory.get("best")
        if best is None or acc > best + self.min_delta:
            memory["best"], memory["waited"] = acc, 0
        else:
            memory["waited"] = memory.get("waited", 0) + 1
        return memory["waited"] >= self.patience


@TERMINATION_RULES.register("target-reached")
class TargetReached(TerminationRule):
    """Stop as soon as the validation accuracy reaches ``target``.

    Args:
        facts: The env's :class:`EnvFacts`.
        target: Accuracy in (0, 1]; default the env's target accuracy.
    """

    def __init__(self, facts: EnvFacts, target: float | None = None) -> None:
        super().__init__(facts)
        target = facts.target if target is None else target
        if target is None or not 0.0 < target <= 1.0:
            raise ValueError(f"target must be in (0, 1] (the env declares none; pass target=), got {target}")
        self.target = float(target)

    def __call__(self, view: ObsView, memory: dict[str, Any]) -> bool:
        """Return whether the validation accuracy is at least the target (up to float32 rounding)."""
        return view.global_("val_accuracy") >= self.target - 1e-6


# ------------------------------------------------------------------------------------------------ controller
class HeuristicController(Controller):
    """A controller made of one selection, one step-size and one termination rule.

    Args:
        env: The env or VecEnv the controller acts on.
        seed: Seed of the controller's random generator.
        selection: Name in :data:`SELECTION_RULES`.
        step_size: Name in :data:`STEP_SIZE_RULES`.
        termination: Name in :data:`TERMINATION_RULES`.
        selection_kwargs: Keyword arguments of the selection rule (e.g. ``{"k": 3}``).
        step_size_kwargs: Keyword arguments of the step-size rule.
        termination_kwargs: Keyword arguments of the termination rule.
    """

    def __init__(
        self,
        env: Any,
        *,
        seed: int | None = None,
        selection: str = "all-clients",
        step_size: str = "constant-lr",
        termination: str = "never",
        selection_kwargs: Mapping[str, Any] | None = None,
        step_size_kwargs: Mapping[str, Any] | None = None,
        termination_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(env, seed=seed)
        from qflgym.envs.actions import ControlDecision  # the env contract

        self._decision = ControlDecision
        self.codec = env_attr(env, "action_codec")
        self.view = ObsView(env_attr(env, "layout"))
        self.facts = EnvFacts.from_env(env)
        self.selection = _build(SELECTION_RULES, selection, self.facts, selection_kwargs)
        self.step_size = _build(STEP_SIZE_RULES, step_size, self.facts, step_size_kwargs)
        self.termination = _build(TERMINATION_RULES, termination, self.facts, termination_kwargs)
        self.spec = {
            "selection": selection,
            "step_size": step_size,
            "termination": termination,
            "selection_kwargs": dict(selection_kwargs or {}),
            "step_size_kwargs": dict(step_size_kwargs or {}),
            "termination_kwargs": dict(termination_kwargs or {}),
        }

    def __repr__(self) -> str:
        return f"HeuristicController({self.spec})"

    def is_episode_start(self, obs: np.ndarray) -> bool:
        """A reset observation has ``round_fraction == 0``."""
        return self.view.bind(obs).global_("round_fraction") == 0.0

    def decide(self, obs: np.ndarray, memory: dict[str, Any]) -> Any:
        """Return this round's ``ControlDecision`` for one observation."""
        view = self.view.bind(obs)
        t = memory.get("t", 0)
        memory["t"] = t + 1
        sel_mem = memory.setdefault("selection", {})
        term_mem = memory.setdefault("termination", {})
        selected = np.asarray(self.selection.select(view, sel_mem, self.rng), dtype=bool)
        lr, local_steps = self.step_size(t)
        stop = bool(self.termination(view, term_mem))
        return self._decision(selected=selected, lr=float(lr), local_steps=int(local_steps), stop=stop)

    def act(self, obs: np.ndarray, memory: dict[str, Any]) -> Any:
        """Encode this round's decision as an env action."""
        return self.codec.encode(self.decide(obs, memory))


def _build(registry: Registry[Any], name: str, facts: EnvFacts, kwargs: Mapping[str, Any] | None) -> Any:
    cls = registry.get(name)
    try:
        return cls(facts, **dict(kwargs or {}))
    except TypeError as err:
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "facts")]
        raise TypeError(
            f"{registry.kind} {name!r}: {err}; allowed arguments: {', '.join(allowed) or '(none)'}"
        ) from None


# ------------------------------------------------------------------------------------------ registered names
CONTROLLERS.add("composite", HeuristicController)


def _register_rule_controllers() -> None:
    """Register every rule as a controller of its own name (the other knobs at the env's defaults)."""
    import inspect

    def make(kind: str, rule: str) -> Any:
        def factory(env: Any, *, seed: int | None = None, **kwargs: Any) -> HeuristicController:
            return HeuristicController(env, seed=seed, **{kind: rule, f"{kind}_kwargs": kwargs})

        cls = {"selection": SELECTION_RULES, "step_size": STEP_SIZE_RULES, "termination": TERMINATION_RULES}[kind].get(
            rule
        )
        params = [
            inspect.Parameter("env", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=None),
        ] + [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for name, p in inspect.signature(cls.__init__).parameters.items()
            if name not in ("self", "facts")
        ]
        factory.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        factory.__name__ = rule.replace("-", "_")
        factory.__doc__ = cls.__doc__
        return factory

    for name in SELECTION_RULES.names():
        CONTROLLERS.add(name, make("selection", name))
    for name in STEP_SIZE_RULES.names():
        CONTROLLERS.add(name, make("step_size", name))
    for name in TERMINATION_RULES.names():
        if name != "never":
            CONTROLLERS.add(name, make("termination", name))


_register_rule_controllers()
