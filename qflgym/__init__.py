"""qflgym: reinforcement-learning environments for controlling quantum federated learning.

The distribution installs its subpackages under this one namespace:

* :mod:`qflgym.qfl_core` – the quantum federated learning simulator (no Gymnasium import).
* :mod:`qflgym.envs` – the Gymnasium suite (importing it registers the ``QFL/...`` ids).
* :mod:`qflgym.agents` – controllers, training, benchmarks and the ``qflgym`` CLI.
"""

__version__ = "0.1.0"
