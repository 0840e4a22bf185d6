"""Batched federations: ``B`` QFL envs stepped together, all their rounds in shared simulator calls.

:class:`QFLVectorEnv` is a Gymnasium :class:`~gymnasium.vector.VectorEnv` over ``B`` sub-envs of one class
and config. A vector step runs the first half of every sub-env's step (:meth:`QFLEnv.begin_step`), then the
rounds of all sub-envs that train together through :func:`qflgym.qfl_core.federation.run_rounds` (one backend
call per local step for every selected client of every sub-env, and one evaluation call), then the second half
(:meth:`QFLEnv.end_step`). Every sub-env keeps its own ``np_random``, federation and generator, so sub-env
``i`` is bit for bit the single env reset with the same seed, resets included.

Made by ``gym.make_vec(id, num_envs=B, vectorization_mode="vector_entry_point", config={...})`` (every
``QFL/...`` id registers this class as its vector entry point). Autoreset follows Gymnasium's documented
``NEXT_STEP`` mode: the step after a sub-env terminates or truncates resets it (its action is ignored) and
returns the reset observation with reward 0, ``terminated=truncated=False`` and the reset info. ``SAME_STEP``
(reset in the step that ends the episode; the last observation and info in ``info["final_obs"]`` /
``info["final_info"]``) is available too. :class:`qflgym.envs.sb3_vec_env.BatchedVecEnv` gives the same
stepping SB3's ``VecEnv`` interface.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from qflgym.qfl_core.federation import run_rounds

from .base import QFLEnv

__all__ = ["QFLVectorEnv", "vector_entry_point"]

StepResult = tuple[Any, float, bool, bool, dict[str, Any]]


class QFLVectorEnv(VectorEnv):
    """``num_envs`` QFL envs of one class and config whose rounds run in shared simulator calls.

    Args:
        env_cls: The :class:`QFLEnv` subclass (or its ``"module:Class"`` entry point).
        num_envs: Number of sub-envs ``B``.
        config: Overrides of the env's default config (the same for every sub-env).
        max_episode_steps: Truncate episodes after this many steps (default: the config's ``round_budget``,
            at which the envs truncate by themselves).
        render_mode: Only ``None`` (render the sub-envs through :meth:`call` if needed).
        autoreset_mode: ``NEXT_STEP`` (Gymnasium's default) or ``SAME_STEP``.
        presets: The variant's env presets (the registration kwargs of its id, e.g. ``("hard",)``).

    Raises:
        ValueError: On ``num_envs < 1``, a render mode, another autoreset mode or a non-positive step limit.
    """

    def __init__(
        self,
        env_cls: type[QFLEnv] | str,
        num_envs: int,
        config: Mapping[str, Any] | None = None,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        presets: Sequence[str] = (),
    ) -> None:
        if isinstance(env_cls, str):
            module, name = env_cls.split(":")
            env_cls = getattr(importlib.import_module(module), name)
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if render_mode is not None:
            raise ValueError(f"render_mode: only None is supported by {type(self).__name__}, got {render_mode!r}")
        mode = AutoresetMode(autoreset_mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, got {mode}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.envs: list[QFLEnv] = [env_cls(config=config, presets=presets) for _ in range(int(num_envs))]
        self.num_envs = int(num_envs)
        self.max_episode_steps = max_episode_steps
        self.render_mode = None
        self.autoreset_mode = mode
        self.metadata = {**env_cls.metadata, "autoreset_mode": mode}
        first = self.envs[0]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._observations = create_empty_array(self.single_observation_space, self.num_envs)
        self._rewards = np.zeros(self.num_envs, dtype=np.float64)
        self._terminations = np.zeros(self.num_envs, dtype=np.bool_)
        self._truncations = np.zeros(self.num_envs, dtype=np.bool_)
        self._autoreset = np.zeros(self.num_envs, dtype=np.bool_)
        self._episode_steps = np.zeros(self.num_envs, dtype=np.int64)

    # --------------------------------------------------------------------------------------------- reset
    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset every sub-env, or those in ``options["reset_mask"]``.

        An int ``seed`` seeds sub-env ``i`` with ``seed + i``, as :class:`gymnasium.vector.SyncVectorEnv` does.
        """
        seeds = self._seeds(seed)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = np.ones(self.num_envs, dtype=np.bool_)
        elif not (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (self.num_envs,)):
            raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), got {mask!r}")
        infos: dict[str, Any] = {}
        env_obs = list(iterate(self.single_observation_space, self._observations)) if not mask.all() else None
        obs_list = []
        for i in range(self.num_envs):
            if mask[i]:
                obs, info = self.reset_env(i, seed=seeds[i], options=options or None)
                infos = self._add_info(infos, info, i)
            else:
                obs = env_obs[i]
            obs_list.append(obs)
        self._observations = concatenate(self.single_observation_space, obs_list, self._observations)
        return deepcopy(self._observations), infos

    def reset_env(
        self, index: int, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset sub-env ``index`` alone (and its step count); returns its observation and info."""
        self._autoreset[index] = self._terminations[index] = self._truncations[index] = False
        self._episode_steps[index] = 0
        return self.envs[index].reset(seed=seed, options=options)

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"seed: a list of seeds needs num_envs={self.num_envs} entries, got {len(seeds)}")
        return seeds

    # ---------------------------------------------------------------------------------------------- step
    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env with its action (sub-envs due for an autoreset reset instead)."""
        resetting = self._autoreset.copy()
        results = self.step_envs(list(iterate(self.action_space, actions)), ~resetting)
        infos: dict[str, Any] = {}
        obs_list = []
        for i in range(self.num_envs):
            if resetting[i]:
                obs, info = self.reset_env(i)
                self._rewards[i] = 0.0
            else:
                obs, self._rewards[i], self._terminations[i], self._truncations[i], info = results[i]
                if self.autoreset_mode == AutoresetMode.SAME_STEP and (self._terminations[i] or self._truncations[i]):
                    final_obs, final_info = obs, info
                    obs, info = self.envs[i].reset()
                    self._episode_steps[i] = 0
                    info = {**info, "final_obs": final_obs, "final_info": final_info}
            infos = self._add_info(infos, info, i)
            obs_list.append(obs)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = self._terminations | self._truncations
        self._observations = concatenate(self.single_observation_space, obs_list, self._observations)
        return (
            deepcopy(self._observations),
            self._rewards.copy(),
            self._terminations.copy(),
            self._truncations.copy(),
            infos,
        )

    def step_envs(self, actions: Sequence[Any], active: np.ndarray) -> list[StepResult | None]:
        """Step the sub-envs where ``active`` is true with their ``actions``, their rounds run together.

        Returns each sub-env's ``(obs, reward, terminated, truncated, info)`` (``None`` where inactive); no
        autoreset happens here.
        """
        begun = {i: self.envs[i].begin_step(actions[i]) for i in np.flatnonzero(active)}
        training = [i for i, (decision, _, _) in begun.items() if not decision.stop]
        reports = run_rounds(
            [self.envs[i].federation for i in training],
            [(begun[i][0].selected, begun[i][0].lr, begun[i][0].local_steps) for i in training],
        )
        by_env = dict(zip(training, reports, strict=True))
        results: list[StepResult | None] = [None] * self.num_envs
        for i, (decision, prev_acc, prev_loss) in begun.items():
            obs, reward, terminated, truncated, info = self.envs[i].end_step(
                decision, prev_acc, prev_loss, by_env.get(i)
            )
            self._episode_steps[i] += 1
            if self.max_episode_steps is not None and self._episode_steps[i] >= self.max_episode_steps:
                truncated = truncated or not terminated
            results[i] = (obs, float(reward), bool(terminated), bool(truncated), info)
        return results

    # --------------------------------------------------------------------------------------- sub-env access
    def action_masks(self) -> np.ndarray:
        """``[B, ...]`` action masks of the sub-envs (sb3-contrib's ``MaskablePPO`` format)."""
        return np.stack([env.action_masks() for env in self.envs])

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call method ``name`` of every sub-env (or read the attribute if it is not callable)."""
        out = []
        for env in self.envs:
            attr = getattr(env, name)
            out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(out)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """The attribute ``name`` of every sub-env."""
        return tuple(getattr(env, name) for env in self.envs)

    def set_attr(self, name: str, values: Any) -> None:
        """Set attribute ``name`` of every sub-env (one value for all, or a list with one per sub-env)."""
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"set_attr: got {len(values)} values for {self.num_envs} sub-envs")
        for env, value in zip(self.envs, values, strict=True):
            setattr(env, name, value)

    def close_extras(self, **kwargs: Any) -> None:
        """Close every sub-env."""
        for env in self.envs:
            env.close()


def vector_entry_point(entry_point: str) -> functools.partial[QFLVectorEnv]:
    """The ``vector_entry_point`` of a registered id whose single-env entry point is ``entry_point`` (picklable)."""
    return functools.partial(QFLVectorEnv, entry_point)
