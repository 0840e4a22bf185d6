"""Policies for SB3 algorithms: the per-client, permutation-equivariant actor-critic (``EquivariantPolicy``).

Train with it by name (``policy: EquivariantPolicy`` in a zoo YAML run by ``qflgym train``) or by class::

    from stable_baselines3 import PPO
    from qflgym.agents.policies import EquivariantActorCriticPolicy, adapt_model

    model = PPO(EquivariantActorCriticPolicy, env, policy_kwargs={"pooling": "attention"})
    model.learn(10_000)
    bigger = adapt_model(model, env_with_more_clients)  # same weights, another N
"""

from qflgym.agents.policies.equivariant import (
    POLICIES,
    ActionLayout,
    EquivariantActorCriticPolicy,
    EquivariantConfig,
    EquivariantMixin,
    MaskableEquivariantActorCriticPolicy,
    PolicyFamily,
    resolve_policy,
)
from qflgym.agents.policies.set_encoder import POOLINGS, ClientSetExtractor, ClientSplit, SetPooling
from qflgym.agents.policies.transfer import adapt_model, adapt_policy, is_equivariant, load_for_env

__all__ = [
    "POLICIES",
    "POOLINGS",
    "ActionLayout",
    "ClientSetExtractor",
    "ClientSplit",
    "EquivariantActorCriticPolicy",
    "EquivariantConfig",
    "EquivariantMixin",
    "MaskableEquivariantActorCriticPolicy",
    "PolicyFamily",
    "SetPooling",
    "adapt_model",
    "adapt_policy",
    "is_equivariant",
    "load_for_env",
    "resolve_policy",
]
