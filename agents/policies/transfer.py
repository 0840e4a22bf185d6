"""Run a policy trained on N clients in a federation of another size N'.

SB3 checks every observation against the space a model was built for, so the clean route is to rebuild the
policy for the new env's spaces and load the same weights: the equivariant policies have no weight whose shape
depends on N, so the state dict loads unchanged (strictly). Three entry points:

* :func:`adapt_policy`: a policy object for new spaces (for ``policy.predict``);
* :func:`adapt_model`: a whole SB3 model for a new env (``predict``, evaluation, or more training on it);
* :func:`load_for_env`: a saved ``.zip`` loaded straight for a new env.

Observation normalization (``VecNormalize``) keeps per-position statistics of shape ``[N, F]``, which do not
carry over to another N; the equivariant recipes therefore train without it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from gymnasium import spaces

from qflgym.agents.policies.equivariant import EquivariantMixin

__all__ = ["adapt_model", "adapt_policy", "is_equivariant", "load_for_env"]


def is_equivariant(policy_or_model: Any) -> bool:
    """Whether a policy (or a model's policy) is one of the equivariant policies."""
    return isinstance(getattr(policy_or_model, "policy", policy_or_model), EquivariantMixin)


def _require_equivariant(policy: Any) -> None:
    if not isinstance(policy, EquivariantMixin):
        raise TypeError(
            f"{type(policy).__name__} has weights shaped by the number of clients; only the equivariant policies "
            "(policy 'EquivariantPolicy') can be moved to another federation size"
        )


def adapt_policy(policy: Any, observation_space: spaces.Space, action_space: spaces.Space) -> Any:
    """A copy of an equivariant ``policy`` built for new spaces, with the same weights, in evaluation mode.

    Args:
        policy: A trained equivariant policy.
        observation_space: The new env's observation space (same kind and features, any N).
        action_space: The new env's action space (the same kind of action, any N).

    Raises:
        TypeError: ``policy`` is not an equivariant policy.
        RuntimeError: The weights do not fit (e.g. another number of features or another kind of action).
    """
    _require_equivariant(policy)
    params = {**policy._get_constructor_parameters(), "observation_space": observation_space}
    new = type(policy)(**{**params, "action_space": action_space})
    new.load_state_dict(policy.state_dict(), strict=True)
    new.to(policy.device)
    new.set_training_mode(False)
    return new


def load_for_env(path: str | Path | io.BytesIO, env: Any, algo_class: type, **load_kwargs: Any) -> Any:
    """Load a saved equivariant model for ``env``, whatever the number of clients it was trained with.

    Args:
        path: The model ``.zip`` (or an in-memory buffer).
        env: The env (or VecEnv) to act on; its spaces replace the saved ones.
        algo_class: The algorithm class (``PPO``, ``A2C``, ``MaskablePPO``).
        **load_kwargs: More ``algo_class.load`` arguments (``device``, ...).

    Raises:
        TypeError: The saved policy is not an equivariant policy.
    """
    custom = {
        **load_kwargs.pop("custom_objects", {}),
        "observation_space": env.observation_space,
        "action_space": env.action_space,
    }
    model = algo_class.load(path, env=env, custom_objects=custom, **load_kwargs)
    _require_equivariant(model.policy)
    return model


def adapt_model(model: Any, env: Any) -> Any:
    """A copy of an equivariant SB3 ``model`` rebuilt for ``env`` (another N), ready to predict or train on it.

    Raises:
        TypeError: The model's policy is not an equivariant policy.
    """
    _require_equivariant(model.policy)
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    return load_for_env(buffer, env, type(model), device=model.device)
