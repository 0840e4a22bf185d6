"""Flower integration: deploy any qflgym controller as a Flower strategy, run qflgym clients in Flower.

Needs the ``[flower]`` extra (``pip install "qflgym[flower]"``: flwr 1.42 with its Ray simulation engine).

* :class:`~.strategy.ControlledStrategy` -- a Flower (Message API) strategy wrapping ``FedAvg``, ``FedProx``,
  ``FedAdam``, ...; a qflgym controller picks the clients, lr, local steps and when to stop.
* :func:`~.client.make_client_app` -- a ``ClientApp`` whose nodes are the quantum clients of a qflgym federation.
* :func:`~.simulation.run_flower` -- one controller-driven Flower simulation of an env (Ray or in-process).
* ``qflgym flower run`` (:mod:`.cli`) -- the same, reported like ``qflgym bench``.

Names are imported on first use, so ``import qflgym.agents.integrations.flower`` works without flwr.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ControlledStrategy", "FederationMirror", "LocalGrid", "make_client_app", "mirror_env", "run_flower"]

_HOMES = {
    "ControlledStrategy": "strategy",
    "FederationMirror": "mirror",
    "LocalGrid": "simulation",
    "make_client_app": "client",
    "mirror_env": "mirror",
    "run_flower": "simulation",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{_HOMES[name]}")
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "flwr":
            raise ModuleNotFoundError('the Flower integration needs flwr: pip install "qflgym[flower]"') from err
        raise
    return getattr(module, name)
