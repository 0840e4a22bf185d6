"""The quantum federated learning simulator behind qflgym (it never imports gymnasium).

Typical use::

    from qflgym.qfl_core import Federation

    fed = Federation("default", seed=0)
    report = fed.run_round(selected=[0, 3, 7], lr=0.1, local_steps=2)
    print(report.val_accuracy, report.bytes_uploaded, report.wall_time_s)

The names below are imported lazily (PEP 562), so importing a light submodule such as
:mod:`qflgym.qfl_core.config` does not load torch, scikit-learn or PennyLane.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import FederationConfig
    from .federation import ClientReport, Federation, RoundReport

_EXPORTS = {
    "FederationConfig": "config",
    "ClientReport": "federation",
    "Federation": "federation",
    "RoundReport": "federation",
}

__all__ = ["ClientReport", "Federation", "FederationConfig", "RoundReport"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
