"""The RL algorithms ``qflgym train`` knows, and which action spaces each supports.

:data:`ALGORITHMS` maps a name (``ppo``, ``a2c``, ``dqn``, ``sac``, ``td3``, ``maskable-ppo``) to an
:class:`AlgorithmSpec`; the class is imported only when needed. :func:`check_action_space` raises an error
that names the algorithms which *do* support an env's action space, before any training starts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from qflgym.config import ConfigError
from qflgym.registry import Registry

__all__ = ["ALGORITHMS", "AlgorithmSpec", "UnsupportedActionSpaceError", "check_action_space", "supporting"]


class UnsupportedActionSpaceError(ConfigError):
    """An algorithm cannot act in an env's action space; the message lists the algorithms that can."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """One trainable algorithm.

    Attributes:
        name: Registry name (``maskable-ppo``); also the zoo's name for the hyperparameter file.
        class_path: ``"module:Class"`` of the algorithm.
        action_spaces: Names of the Gymnasium action-space classes it supports.
        uses_action_masks: Whether it reads ``env.action_masks()`` (sb3-contrib's MaskablePPO).
        off_policy: Whether it is an off-policy (replay-buffer) algorithm.
    """

    name: str
    class_path: str
    action_spaces: tuple[str, ...]
    uses_action_masks: bool = False
    off_policy: bool = False

    def load_class(self) -> type[Any]:
        """Import and return the algorithm class."""
        module, attr = self.class_path.split(":")
        return getattr(importlib.import_module(module), attr)

    def supports(self, action_space: Any) -> bool:
        """Whether the algorithm supports ``action_space`` (matched by space class name)."""
        return type(action_space).__name__ in self.action_spaces


#: Algorithms by name.
ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm", entry_point_group="qflgym.algorithms")

_ON_POLICY = ("Box", "Discrete", "MultiDiscrete", "MultiBinary")
for _spec in (
    AlgorithmSpec("ppo", "stable_baselines3:PPO", _ON_POLICY),
    AlgorithmSpec("a2c", "stable_baselines3:A2C", _ON_POLICY),
    AlgorithmSpec("dqn", "stable_baselines3:DQN", ("Discrete",), off_policy=True),
    AlgorithmSpec("sac", "stable_baselines3:SAC", ("Box",), off_policy=True),
    AlgorithmSpec("td3", "stable_baselines3:TD3", ("Box",), off_policy=True),
    AlgorithmSpec(
        "maskable-ppo",
        "sb3_contrib:MaskablePPO",
        ("Discrete", "MultiDiscrete", "MultiBinary"),
        uses_action_masks=True,
    ),
):
    ALGORITHMS.add(_spec.name, _spec)


def supporting(action_space: Any) -> list[str]:
    """Names of the algorithms that support ``action_space``."""
    return [name for name in ALGORITHMS.names() if ALGORITHMS.get(name).supports(action_space)]


def check_action_space(algo: str, action_space: Any, env_id: str = "the env") -> AlgorithmSpec:
    """Return the spec of ``algo`` if it supports ``action_space``.

    Raises:
        KeyError: ``algo`` is unknown (the message lists the known algorithms).
        UnsupportedActionSpaceError: Naming the algorithms that support the space.
    """
    spec = ALGORITHMS.get(algo)
    if not spec.supports(action_space):
        able = supporting(action_space)
        raise UnsupportedActionSpaceError(
            f"algorithm {algo!r} does not support the action space {action_space} of {env_id} "
            f"({algo} supports {', '.join(spec.action_spaces)}); "
            f"algorithms that do: {', '.join(able) or 'none'}"
        )
    return spec
