"""The heuristic controller: one selection, one step-size and one termination rule from the FL literature.

A :class:`HeuristicController` is composed of three rules, one per knob:

* a **selector** (:data:`~qflgym.agents.controllers.selection.SELECTORS`): ``all-clients``, ``random-k``,
  ``round-robin``, ``power-of-choice``, ``oort``, ``loss-greedy``;
* a **step-size rule** (:data:`~qflgym.agents.controllers.step_size.STEP_SIZE_RULES`): ``constant-lr``,
  ``step-decay``, ``cosine-lr``;
* a **termination rule** (:data:`~qflgym.agents.controllers.termination.TERMINATION_RULES`): ``never``,
  ``patience``, ``target-reached``.

It reads the observation through the env's :class:`~qflgym.envs.observation.ObservationLayout` and emits the
action through the env's ``action_codec.encode(ControlDecision(...))``, so the same controller works on every
qflgym env: knobs an env does not expose are ignored by its codec (a selector on ``QFL/StepSize-v0`` has
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

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from qflgym.agents.controllers import informed  # noqa: F401  (registers the informed rules)
from qflgym.agents.controllers.base import CONTROLLERS, Controller, check_kwargs, env_attr
from qflgym.agents.controllers.observations import EnvFacts, ObsView
from qflgym.agents.controllers.selection import SELECTORS
from qflgym.agents.controllers.step_size import STEP_SIZE_RULES
from qflgym.agents.controllers.termination import TERMINATION_RULES
from qflgym.envs.actions import ControlDecision
from qflgym.registry import Registry

__all__ = ["RULE_REGISTRIES", "HeuristicController"]

#: The rule registry of each knob, by the knob's keyword in :class:`HeuristicController`.
RULE_REGISTRIES: dict[str, Registry[Any]] = {
    "selection": SELECTORS,
    "step_size": STEP_SIZE_RULES,
    "termination": TERMINATION_RULES,
}


class HeuristicController(Controller):
    """A controller made of one selection, one step-size and one termination rule.

    Args:
        env: The env or VecEnv the controller acts on.
        seed: Seed of the controller's random generator.
        selection: Name in :data:`~qflgym.agents.controllers.selection.SELECTORS`.
        step_size: Name in :data:`~qflgym.agents.controllers.step_size.STEP_SIZE_RULES`.
        termination: Name in :data:`~qflgym.agents.controllers.termination.TERMINATION_RULES`.
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
        self.codec = env_attr(env, "action_codec")
        self.view = ObsView(env_attr(env, "layout"))
        self.facts = EnvFacts.from_env(env)
        self.selection = _build(SELECTORS, selection, self.facts, selection_kwargs)
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
        step_mem = memory.setdefault("step_size", {})
        term_mem = memory.setdefault("termination", {})
        selected = np.asarray(self.selection.select(view, sel_mem, self.rng), dtype=bool)
        lr, local_steps = self.step_size(t, view, step_mem)
        stop = bool(self.termination(view, term_mem))
        return ControlDecision(selected=selected, lr=float(lr), local_steps=int(local_steps), stop=stop)

    def act(self, obs: np.ndarray, memory: dict[str, Any]) -> Any:
        """Encode this round's decision as an env action."""
        return self.codec.encode(self.decide(obs, memory))


def _build(registry: Registry[Any], name: str, facts: EnvFacts, kwargs: Mapping[str, Any] | None) -> Any:
    cls = registry.get(name)
    check_kwargs(f"{registry.kind} {name!r}", cls.__init__, dict(kwargs or {}), skip=("self", "facts"))
    return cls(facts, **dict(kwargs or {}))


# ------------------------------------------------------------------------------------------ registered names
CONTROLLERS.add("composite", HeuristicController)


def _register_rule_controllers() -> None:
    """Register every rule as a controller of its own name (the other knobs at the env's defaults)."""

    def make(kind: str, rule: str) -> Any:
        def factory(env: Any, *, seed: int | None = None, **kwargs: Any) -> HeuristicController:
            return HeuristicController(env, seed=seed, **{kind: rule, f"{kind}_kwargs": kwargs})

        cls = RULE_REGISTRIES[kind].get(rule)
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

    for kind, registry in RULE_REGISTRIES.items():
        for name in registry.names():
            if name != "never":
                CONTROLLERS.add(name, make(kind, name))


_register_rule_controllers()
