"""Episode objectives: what a QFL operator pays for, one number per episode (lower is better).

Every env names its objective in its config (``objective``) and reports it in ``info["objective"]`` after
every step: the value the episode would have if it ended now, so the last step's ``info`` holds the
episode's value. Benchmarks compare controllers on it, paired by seed.

The cost of a round is ``wall_time_s + shot_price x shots`` (simulated seconds: a round lasts as long as
its slowest participant plus the server's time; shots are priced in seconds-equivalents by the env's
``shot_price``). Add an objective with ``@objective("name")``: a callable ``fn(outcome) -> float``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from qflgym.registry import Registry

__all__ = ["OBJECTIVES", "OBJECTIVE_LABELS", "EpisodeOutcome", "Objective", "objective"]


@dataclass(frozen=True, slots=True)
class EpisodeOutcome:
    """Where an episode stands, as an objective sees it.

    Attributes:
        rounds: Rounds run.
        total_cost: Cost spent so far (seconds-equivalent: wall time plus priced shots).
        reached: The target accuracy was reached.
        final_accuracy: Accuracy of the current global model (test accuracy when the federation evaluates
            the test split, else validation accuracy).
        round_budget: The env's round budget.
        cost_budget: The env's cost budget (``None``: none).
        cost_scale: The env's reference cost (the unit of ``cost_weight``).
        cost_weight: The operator's price of one ``cost_scale`` of cost in accuracy points.
    """

    rounds: int
    total_cost: float
    reached: bool
    final_accuracy: float
    round_budget: int
    cost_budget: float | None
    cost_scale: float
    cost_weight: float


#: An objective: ``fn(outcome) -> float``, lower is better.
Objective = Callable[[EpisodeOutcome], float]

#: The registry of episode objectives (entry-point group ``qflgym.objectives``).
OBJECTIVES: Registry[Objective] = Registry("objective", entry_point_group="qflgym.objectives")

#: Axis labels of the built-in objectives: what is counted, in which unit (plots, tables).
OBJECTIVE_LABELS: dict[str, str] = {
    "rounds_to_target": "rounds to the target (censored at the round budget)",
    "cost_to_target": "cost to the target (simulated s + priced shots; censored at the cost budget)",
    "error_plus_cost": "(1 - final test accuracy) + cost_weight x cost / cost_scale",
}


def objective(name: str, *, overwrite: bool = False) -> Callable[[Objective], Objective]:
    """Decorator registering an objective under ``name``."""
    return OBJECTIVES.register(name, overwrite=overwrite)


@objective("rounds_to_target")
def rounds_to_target(outcome: EpisodeOutcome) -> float:
    """Rounds run until the target was reached; the round budget when it was not (censored)."""
    return float(outcome.rounds if outcome.reached else outcome.round_budget)


@objective("cost_to_target")
def cost_to_target(outcome: EpisodeOutcome) -> float:
    """Cost spent until the target was reached; the cost budget when it was not (censored).

    Without a cost budget an unreached episode counts as infinitely expensive.
    """
    if outcome.reached:
        return outcome.total_cost
    return math.inf if outcome.cost_budget is None else outcome.cost_budget


@objective("error_plus_cost")
def error_plus_cost(outcome: EpisodeOutcome) -> float:
    """The operator's loss ``(1 - final accuracy) + cost_weight x total_cost / cost_scale``."""
    return (1.0 - outcome.final_accuracy) + outcome.cost_weight * outcome.total_cost / outcome.cost_scale
