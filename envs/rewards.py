"""Named reward terms: the reward is ``sum(weight[name] * term(ctx))`` over the configured terms.

Every step the env builds one :class:`RewardContext`, evaluates each term named in the config's
``reward_weights`` and reports all their (unweighted) values in ``info["rewards"]``, so it is always visible
why a reward was what it was. Cost terms are positive magnitudes; their weights carry the sign (as in
HighwayEnv).

Adding a term — three ways:

1. **A callable in the config** (no registration)::

       def fairness(ctx: RewardContext) -> float:
           return float(ctx.report.participants != ()) if ctx.report else 0.0

       gym.make("QFL/ClientSelection-v0", config={"reward_terms": {"fairness": fairness},
                                                  "reward_weights": {"fairness": 0.1}})

2. **A registered name** (usable from YAML presets)::

       from qflgym.envs.rewards import reward_term

       @reward_term("fairness")
       def fairness(ctx): ...

       gym.make("QFL/ClientSelection-v0", config={"reward_weights": {"fairness": 0.1}})

3. **A third-party package** exposing the entry-point group ``qflgym.rewards``; in its ``pyproject.toml``::

       [project.entry-points."qflgym.rewards"]
       fairness = "my_pkg.rewards:fairness"

   the name is then usable as in 2 once the package is installed.

A term is any callable ``term(ctx: RewardContext) -> float``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qflgym.registry import Registry

if TYPE_CHECKING:
    from qflgym.qfl_core.federation import RoundReport

__all__ = ["REWARDS", "RewardContext", "RewardTerm", "reward_term", "uniform_loss"]


@dataclass(slots=True)
class RewardContext:
    """Everything a reward term may look at for one env step.

    Attributes:
        report: The round's report, or ``None`` when the controller stopped without running a round.
        stopped: The controller stopped the episode this step.
        target_reached: The target accuracy was reached for the first time this step.
        val_accuracy: Validation accuracy after this step.
        val_loss: Validation loss after this step.
        prev_val_accuracy: Validation accuracy before this step (``1/K`` before the first round).
        prev_val_loss: Validation loss before this step (``ln K`` before the first round).
        rounds: Rounds run so far in the episode (this one included).
        round_budget: The episode's round budget.
        target_accuracy: The configured target (``None`` if there is none).
        n_classes: K.
        bytes_scale: Bytes of a round in which every client trains (upload + download).
        time_scale: Reference simulated seconds of a round in which every client trains.
        shots_scale: Reference shots of a round in which every client trains (1 with exact expectations).
        cost: This round's cost, ``wall_time_s + shot_price x shots`` (0 without a round).
        cost_scale: The env's reference cost (``cost_scale`` in its config).
        env: The unwrapped env, for terms that need more.
    """

    report: RoundReport | None
    stopped: bool
    target_reached: bool
    val_accuracy: float
    val_loss: float
    prev_val_accuracy: float
    prev_val_loss: float
    rounds: int
    round_budget: int
    target_accuracy: float | None
    n_classes: int
    bytes_scale: float
    time_scale: float
    shots_scale: float
    cost: float = 0.0
    cost_scale: float = 1.0
    env: Any = None


#: A reward term: ``term(ctx) -> float``.
RewardTerm = Callable[[RewardContext], float]

#: The registry of named reward terms; third-party packages add to it through the ``qflgym.rewards``
#: entry-point group.
REWARDS: Registry[RewardTerm] = Registry("reward term", entry_point_group="qflgym.rewards")


def reward_term(name: str, *, overwrite: bool = False) -> Callable[[RewardTerm], RewardTerm]:
    """Decorator registering a reward term under ``name`` (see the module docstring)."""
    return REWARDS.register(name, overwrite=overwrite)


@reward_term("accuracy_gain")
def accuracy_gain(ctx: RewardContext) -> float:
    """Change of validation accuracy in this step (telescopes to final minus initial accuracy)."""
    return ctx.val_accuracy - ctx.prev_val_accuracy


@reward_term("loss_drop")
def loss_drop(ctx: RewardContext) -> float:
    """Decrease of validation loss in this step, in units of ``ln K`` (the loss of a uniform guess)."""
    scale = uniform_loss(ctx.n_classes)
    return (ctx.prev_val_loss - ctx.val_loss) / scale


@reward_term("communication_cost")
def communication_cost(ctx: RewardContext) -> float:
    """Bytes moved this round as a fraction of a round in which every client trains."""
    if ctx.report is None:
        return 0.0
    return (ctx.report.bytes_uploaded + ctx.report.bytes_downloaded) / ctx.bytes_scale


@reward_term("wall_time_cost")
def wall_time_cost(ctx: RewardContext) -> float:
    """Simulated seconds of this round relative to the reference round time."""
    return 0.0 if ctx.report is None else ctx.report.wall_time_s / ctx.time_scale


@reward_term("shot_cost")
def shot_cost(ctx: RewardContext) -> float:
    """Shots spent this round relative to the reference shots of a full round (0 with exact expectations)."""
    return 0.0 if ctx.report is None else ctx.report.shots_used / ctx.shots_scale


@reward_term("cost")
def cost(ctx: RewardContext) -> float:
    """This round's cost (wall time plus priced shots) in units of the env's ``cost_scale``."""
    return ctx.cost / ctx.cost_scale


@reward_term("round_cost")
def round_cost(ctx: RewardContext) -> float:
    """1 for every round run (makes fewer rounds-to-target better)."""
    return 0.0 if ctx.report is None else 1.0


@reward_term("target_bonus")
def target_bonus(ctx: RewardContext) -> float:
    """1 on the step that first reaches the target accuracy."""
    return 1.0 if ctx.target_reached else 0.0


@reward_term("stop_accuracy")
def stop_accuracy(ctx: RewardContext) -> float:
    """The validation accuracy at the moment the controller stops (0 on other steps)."""
    return ctx.val_accuracy if ctx.stopped else 0.0


@reward_term("early_stop_penalty")
def early_stop_penalty(ctx: RewardContext) -> float:
    """When stopping below the target: the missing accuracy ``target - accuracy`` (0 otherwise)."""
    if not ctx.stopped or ctx.target_accuracy is None:
        return 0.0
    return max(0.0, ctx.target_accuracy - ctx.val_accuracy)


#: The terms shipped with qflgym, in the order they are reported.
BUILTIN_TERMS: tuple[str, ...] = (
    "accuracy_gain",
    "loss_drop",
    "communication_cost",
    "wall_time_cost",
    "shot_cost",
    "round_cost",
    "target_bonus",
    "stop_accuracy",
    "early_stop_penalty",
)


def uniform_loss(n_classes: int) -> float:
    """``ln K``, the cross-entropy of a uniform guess over ``K`` classes: the unit of losses (1 for one class)."""
    return math.log(n_classes) if n_classes > 1 else 1.0


def resolve_terms(
    weights: dict[str, float], custom: dict[str, RewardTerm]
) -> tuple[dict[str, RewardTerm], dict[str, float]]:
    """Look up every weighted term once (custom callables first, then the registry).

    Returns:
        ``(callables, weights)``, both keyed by the term's name in the order of ``weights``.

    Raises:
        KeyError: Naming the allowed terms when a name is unknown.
    """
    fns = {name: custom[name] if name in custom else REWARDS.get(name) for name in weights}
    return fns, {name: float(weight) for name, weight in weights.items()}
