"""Step-size rules of the heuristic controllers, by name in :data:`STEP_SIZE_RULES`.

``constant-lr``, ``step-decay`` (``lr0 * gamma ** (t // every)``; ``every=1`` is exponential decay),
``cosine-lr``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

from qflgym.agents.controllers.observations import EnvFacts, ObsView
from qflgym.config import ConfigError
from qflgym.registry import Registry

__all__ = ["STEP_SIZE_RULES", "ConstantLR", "CosineLR", "StepDecay", "StepSizeRule"]

#: Step-size rules by name: ``cls(facts, **kwargs)`` with ``__call__(round, view, memory) -> (lr, local_steps)``
#: (schedules ignore the observation; reactive rules read it and keep their state in ``memory``).
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
            raise ConfigError(f"lr must be > 0, got {self.lr0}")
        if self.local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1, got {self.local_steps}")

    @abstractmethod
    def __call__(self, t: int, view: ObsView, memory: dict[str, Any]) -> tuple[float, int]:
        """Return ``(lr, local_steps)`` for round ``t`` given this round's observation and the rule's memory."""


@STEP_SIZE_RULES.register("constant-lr")
class ConstantLR(StepSizeRule):
    """The same learning rate and local steps every round."""

    def __call__(self, t: int, view: ObsView, memory: dict[str, Any]) -> tuple[float, int]:
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
            raise ConfigError(f"gamma must be in (0, 1], got {gamma}")
        if every < 1:
            raise ConfigError(f"every must be >= 1, got {every}")
        self.gamma, self.every = float(gamma), int(every)

    def __call__(self, t: int, view: ObsView, memory: dict[str, Any]) -> tuple[float, int]:
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
            raise ConfigError(f"lr_min must be in [0, lr={self.lr0}], got {self.lr_min}")
        rounds = facts.max_rounds if rounds is None else rounds
        if rounds is None or rounds < 1:
            raise ConfigError("cosine-lr needs rounds >= 1 (the env declares no round budget; pass rounds=)")
        self.rounds = int(rounds)

    def __call__(self, t: int, view: ObsView, memory: dict[str, Any]) -> tuple[float, int]:
        """Return the annealed ``(lr, local_steps)`` of round ``t``."""
        frac = min(t, self.rounds) / self.rounds
        return self.lr_min + (self.lr0 - self.lr_min) * 0.5 * (1.0 + math.cos(math.pi * frac)), self.local_steps
