"""Termination rules of the heuristic controllers, by name in :data:`TERMINATION_RULES`.

``never``, ``patience`` (early stopping on the validation accuracy), ``target-reached``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from qflgym.agents.controllers.observations import EnvFacts, ObsView
from qflgym.config import ConfigError
from qflgym.registry import Registry

__all__ = ["TERMINATION_RULES", "NeverStop", "Patience", "TargetReached", "TerminationRule"]

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
            raise ConfigError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta}")
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
            raise ConfigError(f"target must be in (0, 1] (the env declares none; pass target=), got {target}")
        self.target = float(target)

    def __call__(self, view: ObsView, memory: dict[str, Any]) -> bool:
        """Return whether the validation accuracy is at least the target (up to float32 rounding)."""
        return view.global_("val_accuracy") >= self.target - 1e-6
