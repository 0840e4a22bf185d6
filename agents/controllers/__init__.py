"""Controllers: everything that acts on a qflgym env, behind Stable-Baselines3's ``predict`` protocol.

Modules:

* :mod:`.base` -- the protocol, the :class:`Controller` base class and the :data:`CONTROLLERS` registry
  (:func:`make_controller`, :func:`controller_names`);
* :mod:`.observations` -- what heuristics read (:class:`~.observations.EnvFacts`, :class:`~.observations.ObsView`);
* :mod:`.selection`, :mod:`.step_size`, :mod:`.termination` -- the rule families of the heuristics;
* :mod:`.composite` -- :class:`~.composite.HeuristicController` (one rule per knob) and the rule controllers;
* :mod:`.sb3` -- trained Stable-Baselines3 models (``sb3``).

A new controller family (a planner, an informed heuristic) is a module here that registers its factories into
:data:`CONTROLLERS` and is listed in ``base._BUILTIN_MODULES``.
"""

from qflgym.agents.controllers.base import (
    CONTROLLERS,
    PLUGIN_MODULES,
    Controller,
    PredictProtocol,
    controller_kwargs,
    controller_names,
    env_attr,
    get_action_masks,
    make_controller,
)

__all__ = [
    "CONTROLLERS",
    "PLUGIN_MODULES",
    "Controller",
    "PredictProtocol",
    "controller_kwargs",
    "controller_names",
    "env_attr",
    "get_action_masks",
    "make_controller",
]
