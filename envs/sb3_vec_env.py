"""Batched federations as a Stable-Baselines3 ``VecEnv`` (``qflgym train --vec-env batched``).

:class:`BatchedVecEnv` steps the sub-envs of a :class:`~qflgym.envs.vector.QFLVectorEnv` (all rounds in shared
simulator calls) with SB3's conventions: ``reset()`` returns only observations, a sub-env whose episode ends
is reset in the same step and its last observation is ``info["terminal_observation"]``, and
``info["TimeLimit.truncated"]`` marks truncations. Sub-env ``i`` is seeded ``seed + i`` by ``seed(seed)``, as
SB3's ``make_vec_env`` does, so it matches the ``i``-th env of a ``DummyVecEnv`` bit for bit. Wrap it in
``VecMonitor`` for episode statistics. This module imports Stable-Baselines3 (the ``agents`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from .vector import QFLVectorEnv

__all__ = ["BatchedVecEnv"]


class BatchedVecEnv(VecEnv):
    """``num_envs`` sub-envs of a registered ``QFL/...`` id, their rounds batched, behind SB3's ``VecEnv``.

    Args:
        env_id: A registered qflgym id (its registration kwargs, e.g. the v1 presets, apply).
        num_envs: Number of sub-envs.
        config: Env config overrides (the same for every sub-env).
    """

    def __init__(self, env_id: str, num_envs: int, config: Mapping[str, Any] | None = None) -> None:
        spec = gym.spec(env_id)
        self.venv = QFLVectorEnv(
            spec.entry_point, num_envs, config=config, max_episode_steps=spec.max_episode_steps, **spec.kwargs
        )
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self.metadata = self.venv.metadata
        self._actions: np.ndarray | None = None

    def reset(self) -> VecEnvObs:
        """Reset every sub-env with the seeds (and options) set by ``seed()`` / ``set_options()``."""
        obs = []
        for i in range(self.num_envs):
            o, self.reset_infos[i] = self.venv.reset_env(i, seed=self._seeds[i], options=self._options[i] or None)
            obs.append(o)
        self._reset_seeds()
        self._reset_options()
        return self._stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions for :meth:`step_wait`."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step every sub-env (rounds batched); reset the ones whose episode ended."""
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        results = self.venv.step_envs(list(self._actions), np.ones(self.num_envs, dtype=bool))
        obs, rewards, dones, infos = [], np.zeros(self.num_envs, dtype=np.float32), np.zeros(self.num_envs, bool), []
        for i, result in enumerate(results):
            assert result is not None
            o, rewards[i], terminated, truncated, info = result
            dones[i] = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if dones[i]:
                info["terminal_observation"] = o
                o, self.reset_infos[i] = self.venv.reset_env(i)
            obs.append(o)
            infos.append(info)
        self._actions = None
        return self._stack(obs), rewards, dones, infos

    def _stack(self, obs: Sequence[Any]) -> VecEnvObs:
        if isinstance(self.observation_space, gym.spaces.Dict):
            return {key: np.stack([o[key] for o in obs]) for key in self.observation_space.spaces}
        return np.stack(obs)

    def close(self) -> None:
        """Close the sub-envs."""
        self.venv.close()

    def _targets(self, indices: VecEnvIndices) -> list[Any]:
        return [self.venv.envs[i] for i in self._get_indices(indices)]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attribute ``attr_name`` of the sub-envs at ``indices``."""
        return [getattr(env, attr_name) for env in self._targets(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set attribute ``attr_name`` of the sub-envs at ``indices``."""
        for env in self._targets(indices):
            setattr(env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call method ``method_name`` of the sub-envs at ``indices`` (e.g. ``action_masks`` for MaskablePPO)."""
        return [getattr(env, method_name)(*method_args, **method_kwargs) for env in self._targets(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """The sub-envs are never wrapped (wrap the ``VecEnv`` in ``VecMonitor`` instead)."""
        return [False for _ in self._targets(indices)]
