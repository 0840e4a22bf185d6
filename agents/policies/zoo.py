"""Make ``policy: EquivariantPolicy`` resolve in rl-baselines3-zoo's own trainer.

rl_zoo3 passes the YAML's ``policy`` string to the algorithm, which looks it up in its class-level
``policy_aliases``. Importing this module adds every :data:`~qflgym.agents.policies.POLICIES` name to the
aliases of PPO, A2C and MaskablePPO, so the packaged recipes run as-is with::

    python -m rl_zoo3.train --algo ppo --env QFL/ClientSelection-v0 --conf-file configs/agents/ppo.yml
        --gym-packages qflgym.envs qflgym.agents.policies.zoo

(``qflgym train`` resolves the names itself and does not need this module.)
"""

from __future__ import annotations

from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, PPO

from qflgym.agents.policies.equivariant import POLICIES

__all__ = ["register_aliases"]


def register_aliases(algo_classes: tuple[type, ...] = (PPO, A2C, MaskablePPO)) -> None:
    """Add every :data:`POLICIES` name to the ``policy_aliases`` of ``algo_classes`` (idempotent)."""
    for algo_class in algo_classes:
        for name in POLICIES.names():
            algo_class.policy_aliases.setdefault(name, POLICIES.get(name).for_algorithm(algo_class, name))


register_aliases()
