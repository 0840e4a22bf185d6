"""The quantum federated learning simulator behind qflgym (it never imports gymnasium).

Typical use::

    from qflgym.qfl_core import Federation

    fed = Federation("default", seed=0)
    report = fed.run_round(selected=[0, 3, 7], lr=0.1, local_steps=2)
    print(report.val_accuracy, report.bytes_uploaded, report.wall_time_s)
"""

from .config import ConfigError, FederationConfig
from .federation import ClientReport, Federation, RoundReport

__all__ = ["ClientReport", "ConfigError", "Federation", "FederationConfig", "RoundReport"]
