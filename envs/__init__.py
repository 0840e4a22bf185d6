"""The qflgym Gymnasium suite: quantum federated learning as control problems.

Importing this package registers every ``QFL/...`` id (see :data:`ENV_IDS`)::

    import gymnasium as gym
    import qflgym.envs  # noqa: F401  (or: gym.make("qflgym.envs:QFL/ClientSelection-v0"))

    env = gym.make("QFL/ClientSelection-v0", config={"federation": {"clients": {"n_clients": 16}}})
"""

from .actions import ControlDecision
from .base import QFLEnv
from .client_selection import ClientSelectionEnv
from .config import EnvConfig
from .full_control import FullControlEnv
from .observation import CLIENT_FEATURES, GLOBAL_FEATURES, ObservationLayout
from .registration import ENV_IDS, REGISTRATIONS, TEXT_ENV_IDS, register_envs
from .rewards import REWARDS, RewardContext, reward_term
from .round_termination import RoundTerminationEnv
from .rules import SELECTION_RULES
from .step_size import StepSizeEnv
from .wrappers import DecisionActions

register_envs()

__all__ = [
    "CLIENT_FEATURES",
    "ENV_IDS",
    "GLOBAL_FEATURES",
    "REGISTRATIONS",
    "REWARDS",
    "SELECTION_RULES",
    "TEXT_ENV_IDS",
    "ClientSelectionEnv",
    "ControlDecision",
    "DecisionActions",
    "EnvConfig",
    "FullControlEnv",
    "ObservationLayout",
    "QFLEnv",
    "RewardContext",
    "RoundTerminationEnv",
    "StepSizeEnv",
    "register_envs",
    "reward_term",
]
