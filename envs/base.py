"""The engine of the QFL envs: one round from ``env.step(action)`` to ``Federation.run_round`` and back.

Every env of the suite is a :class:`QFLEnv` that differs only in its action codec (what the controller
decides) and its ``default_config()``. The step is the hot path: the action is decoded by the codec, the
knobs the controller does not set are filled from the config (fixed lr and local steps, a selection rule),
the federation runs the round, and the observation, reward terms and info are built from the
:class:`~qflgym.qfl_core.federation.RoundReport` with a few vectorized numpy operations on persistent arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

from qflgym.config import ConfigError
from qflgym.qfl_core.federation import Federation, RoundReport
from qflgym.qfl_core.kinds import make_federation

from .actions import ActionCodec, ControlDecision, LearningRateMap
from .config import EnvConfig, merge_presets, resolve_env_config
from .objectives import OBJECTIVES, EpisodeOutcome
from .observation import ObservationLayout, RoundScales, static_client_features
from .render import RoundRecord, render_ansi, render_rgb_array
from .rewards import BUILTIN_TERMS, RewardContext, resolve_terms
from .rules import SELECTION_RULES, ClientState
from .snapshot import Snapshots

__all__ = ["QFLEnv"]

#: The fields of a :class:`RoundRecord` copied from the step's ``info`` (all but the reward).
_RECORDED = tuple(f for f in RoundRecord._fields if f != "reward")


class QFLEnv(Snapshots, gym.Env, ABC):
    """Base class of the QFL envs (not registered itself); see the subclasses for the Markdown docs.

    Args:
        config: Overrides of the defaults (nested dicts are deep-merged).
        render_mode: ``None``, ``"ansi"`` or ``"rgb_array"``.
        presets: Env presets ``configs/envs/<name>.yaml`` deep-merged, in order, over
            :meth:`default_config` before ``config``: the variants of an env (``("hard",)`` for
            ``-Hard`` ids) are registration kwargs, ``gym.register(..., kwargs={"presets": ("hard",)})``.

    Attributes:
        config: The validated :class:`~qflgym.envs.config.EnvConfig`.
        presets: The env presets merged over :meth:`default_config`.
        federation: The current episode's :class:`~qflgym.qfl_core.federation.Federation` (``None`` before
            the first ``reset``).
        layout: The :class:`~qflgym.envs.observation.ObservationLayout` of the observations.
        action_codec: The :class:`~qflgym.envs.actions.ActionCodec` between actions and decisions.
        last_report: The last round's :class:`~qflgym.qfl_core.federation.RoundReport` (``None`` if none).
        last_decision: The resolved :class:`~qflgym.envs.actions.ControlDecision` of the last step.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    #: Federations kept per env instance, keyed by seed: resetting to a seed seen recently restores its
    #: initial state instead of rebuilding data, partition and devices (the same result, faster).
    federation_cache_size: ClassVar[int] = 8

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The default config of this env (a plain dict; variants override this method only)."""
        return {
            "federation_preset": "default",
            "federation": {},
            "federation_seed": None,
            "round_budget": 60,
            "target_accuracy": 0.75,
            "selection_rule": "random-k",
            "clients_per_round": None,
            "selection_budget": None,
            "lr_multiplier": 1.0,
            "lr_multiplier_range": [0.1, 10.0],
            "lr_bins": 7,
            "local_steps": None,
            "local_steps_range": [1, 5],
            "observation": "flat",
            "features": "v0",
            "objective": "rounds_to_target",
            "shot_price": 0.0,
            "cost_scale": 1.0,
            "cost_budget": None,
            "cost_weight": 0.0,
            "reward_terms": {},
            "reward_weights": {name: 0.0 for name in BUILTIN_TERMS} | {"accuracy_gain": 1.0},
        }

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        render_mode: str | None = None,
        presets: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self._spec: EnvSpec | None = None
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported; allowed: None, "
                + ", ".join(self.metadata["render_modes"])
            )
        self.render_mode = render_mode
        what = type(self).__name__
        self.presets = _preset_names(presets, what)
        defaults = merge_presets(self.default_config(), *self.presets)
        self.config: EnvConfig = resolve_env_config(defaults, config, what)
        cfg = self.config
        self.n_clients = cfg.n_clients
        self.layout = ObservationLayout(self.n_clients, cfg.features)
        self._objective = OBJECTIVES.get(cfg.objective)
        self._cost_reference = cfg.cost_budget or cfg.round_budget * cfg.cost_scale
        self._dict_obs = cfg.observation == "dict"
        self.observation_space = self.layout.dict_space() if self._dict_obs else self.layout.flat_space()
        self._obs_low = np.concatenate([np.tile(self.layout.client_low, self.n_clients), self.layout.global_low])
        self._obs_high = np.concatenate([np.tile(self.layout.client_high, self.n_clients), self.layout.global_high])
        self.lr_map = LearningRateMap(cfg.federation.training.lr, *cfg.lr_multiplier_range)
        self._fixed_lr = cfg.fixed_lr
        self._fixed_steps = cfg.fixed_local_steps
        self._k = cfg.k
        self._budget = cfg.round_budget
        self._target = cfg.target_accuracy
        self.action_codec: ActionCodec = self._make_codec()
        self.action_space = self.action_codec.space
        self._selection_rule = SELECTION_RULES.get(cfg.selection_rule)
        self._reward_fns, self._reward_weights = resolve_terms(dict(cfg.reward_weights), dict(cfg.reward_terms))
        self.federation: Federation | None = None
        self._fed_seed: int | None = None
        self._fed_cache: OrderedDict[int, tuple[Federation, dict[str, Any]]] = OrderedDict()
        self.last_report: RoundReport | None = None
        self.last_decision: ControlDecision | None = None
        self._episode_over = False
        self.client_state = ClientState.fresh(self.n_clients)
        self._history: list[RoundRecord] = []

    @property
    def spec(self) -> EnvSpec | None:
        """The registration's spec (set by ``gym.make``), its ``max_episode_steps`` the config's ``round_budget``.

        The ids are registered without ``max_episode_steps``, so no ``TimeLimit`` fixes the horizon at the
        default budget: the env truncates itself after ``round_budget`` rounds, and ``env.spec`` says so.
        """
        return self._spec

    @spec.setter
    def spec(self, value: EnvSpec | None) -> None:
        self._spec = None if value is None else dataclasses.replace(value, max_episode_steps=self._budget)

    # ------------------------------------------------------------------------------------------ subclass hook
    @abstractmethod
    def _make_codec(self) -> ActionCodec:
        """Build the env's action codec (what the controller decides)."""

    # ------------------------------------------------------------------------------------------------ reset
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start an episode on a fresh federation.

        Args:
            seed: Seeds ``np_random``, from which the federation seed is drawn (unless the config fixes
                ``federation_seed``).
            options: ``{"federation_seed": int}`` runs this episode on that federation.
        """
        super().reset(seed=seed)
        options = options or {}
        if "federation_seed" in options:
            fed_seed = int(options["federation_seed"])
        elif self.config.federation_seed is not None:
            fed_seed = self.config.federation_seed
        else:
            fed_seed = int(self.np_random.integers(2**31 - 1))
        self._start_federation(fed_seed)
        fed = self.federation
        initial = fed.evaluate()
        self._val_acc = float(initial["val_accuracy"])
        self._val_loss = float(initial["val_loss"])
        self._prev_val_acc = self._val_acc
        self._prev_val_loss = self._val_loss
        self._total_bytes = 0.0
        self._total_time = 0.0
        self._total_shots = 0.0
        self._total_cost = 0.0
        self._last_cost = 0.0
        self._accuracy = _accuracy(initial["test_accuracy"], initial["val_accuracy"])
        self._last_lr = self._fixed_lr
        self._last_steps = self._fixed_steps
        self._steps = 0
        self._reached = False
        self._episode_over = False
        self.client_state = ClientState.fresh(self.n_clients)
        self._update_norm = np.zeros(self.n_clients)
        self._cosine = np.zeros(self.n_clients)
        self._read_availability()
        self._history = []
        self.last_report = None
        self.last_decision = None
        obs = self._observation()
        info = {
            "round": 0,
            "federation_seed": fed_seed,
            "val_accuracy": self._val_acc,
            "val_loss": self._val_loss,
            "test_accuracy": _none_if_nan(initial["test_accuracy"]),
        }
        return obs, info

    def _start_federation(self, seed: int) -> None:
        """Make ``self.federation`` the freshly initialized federation of ``seed`` (cached per env instance)."""
        entry = self._fed_cache.get(seed)
        if entry is None:
            fed = make_federation(self.config.federation, seed)
            entry = (fed, copy.deepcopy(fed.state_dict()))
            self._fed_cache[seed] = entry
            while len(self._fed_cache) > self.federation_cache_size:
                self._fed_cache.popitem(last=False)
        else:
            self._fed_cache.move_to_end(seed)
            entry[0].load_state_dict(copy.deepcopy(entry[1]))
        self.federation = entry[0]
        self._fed_seed = seed
        self.refresh_static_features()

    def refresh_static_features(self) -> None:
        """Recompute the static client features and the reference scales from ``self.federation``.

        The env calls it when it starts a federation; an env whose federation can change its clients (the
        Flower mirror) calls it after they change.
        """
        fed = self.federation
        self._client_obs = static_client_features(fed, self.layout, self.config.shot_price, self.config.cost_scale)
        self._scales = RoundScales.of(fed, self._fixed_steps)
        self._has_availability = hasattr(fed, "available")

    def _read_availability(self) -> None:
        if self._has_availability:
            self.client_state.available = np.asarray(self.federation.available, dtype=bool).copy()

    # ------------------------------------------------------------------------------------------------- step
    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Run one round with the decision encoded by ``action`` (or stop).

        Raises:
            ValueError: If ``action`` is not in the action space (the message names the space).
            RuntimeError: If called before ``reset`` or after the episode ended.
        """
        decision, prev_acc, prev_loss = self.begin_step(action)
        report = None
        if not decision.stop:
            report = self.federation.run_round(decision.selected, decision.lr, decision.local_steps)
        return self.end_step(decision, prev_acc, prev_loss, report)

    def begin_step(self, action: Any) -> tuple[ControlDecision, float, float]:
        """First half of :meth:`step`: decode ``action`` and fill the knobs it leaves open.

        Returns the resolved decision (every field set unless it stops) and the validation accuracy and loss
        before the round. The round itself (``federation.run_round`` with the decision, unless it stops) and
        :meth:`end_step` complete the step; a vectorized env runs the rounds of many envs in one batch between
        the two halves.
        """
        if self.federation is None:
            raise RuntimeError(f"{type(self).__name__}: call reset() before step()")
        if self._episode_over:
            raise RuntimeError(f"{type(self).__name__}: the episode has ended; call reset()")
        decision = self.action_codec.decode(action)
        self._steps += 1
        if decision.stop:
            return decision, self._val_acc, self._val_loss
        selected = decision.selected
        if selected is None:
            selected = self._selection_rule(self.client_state, self._k, self.np_random)
        lr = self._fixed_lr if decision.lr is None else decision.lr
        steps = self._fixed_steps if decision.local_steps is None else decision.local_steps
        return ControlDecision(selected=selected, lr=lr, local_steps=steps, stop=False), self._val_acc, self._val_loss

    def end_step(
        self, decision: ControlDecision, prev_acc: float, prev_loss: float, report: RoundReport | None
    ) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Second half of :meth:`step`: book the round's ``report`` (``None`` when stopping); returns step's tuple."""
        self.last_decision = decision
        if report is not None:
            self._apply_report(report, decision.selected)
        self.last_report = report
        reached_now = self._target is not None and not self._reached and self._val_acc >= self._target
        self._reached = self._reached or reached_now
        terms = self._rewards(report, decision.stop, reached_now, prev_acc, prev_loss)
        reward = self._reward(terms)
        terminated = self._terminated(decision.stop, reached_now)
        truncated = self._truncated(terminated)
        self._episode_over = terminated or truncated
        obs = self._observation()
        info = self._info(report, decision.stop, terms)
        self._history.append(RoundRecord(reward=reward, **{f: info[f] for f in _RECORDED}))
        return obs, reward, terminated, truncated, info

    def _rewards(
        self, report: RoundReport | None, stopped: bool, reached_now: bool, prev_acc: float, prev_loss: float
    ) -> dict[str, float]:
        """The unweighted value of every configured reward term (``info["rewards"]``)."""
        ctx = RewardContext(
            report=report,
            stopped=stopped,
            target_reached=reached_now,
            val_accuracy=self._val_acc,
            val_loss=self._val_loss,
            prev_val_accuracy=prev_acc,
            prev_val_loss=prev_loss,
            rounds=self.client_state.rounds,
            round_budget=self._budget,
            target_accuracy=self._target,
            n_classes=self.federation.n_classes,
            bytes_scale=self._scales.bytes,
            time_scale=self._scales.time,
            shots_scale=self._scales.shots,
            cost=0.0 if report is None else self._last_cost,
            cost_scale=self.config.cost_scale,
            env=self,
        )
        return {name: float(fn(ctx)) for name, fn in self._reward_fns.items()}

    def _reward(self, terms: dict[str, float]) -> float:
        """The weighted sum of the terms (weights from ``reward_weights``).

        Raises:
            FloatingPointError: If the sum is not finite (naming every term).
        """
        reward = 0.0
        for name, value in terms.items():
            reward += self._reward_weights[name] * value
        if not math.isfinite(reward):
            raise FloatingPointError(f"reward is not finite: terms {terms}")
        return reward

    def _terminated(self, stopped: bool, reached_now: bool) -> bool:
        """The task's own ends: the controller stopped, or the target accuracy was reached."""
        return stopped or reached_now

    def _truncated(self, terminated: bool) -> bool:
        """The round budget or the cost budget is spent (the env truncates by itself; see :attr:`spec`)."""
        if terminated:
            return False
        cost_budget = self.config.cost_budget
        return self._steps >= self._budget or (cost_budget is not None and self._total_cost >= cost_budget)

    def _info(self, report: RoundReport | None, stopped: bool, terms: dict[str, float]) -> dict[str, Any]:
        """The step's ``info``: the round's metrics and costs, running totals and the reward terms."""
        return {
            "round": self.client_state.rounds,
            "val_accuracy": self._val_acc,
            "val_loss": self._val_loss,
            "test_accuracy": None if report is None else _none_if_nan(report.test_accuracy),
            "selected": 0 if report is None else len(report.selected),
            "participants": 0 if report is None else len(report.participants),
            "dropped": 0 if report is None else len(report.dropped),
            "lr": self._last_lr,
            "local_steps": self._last_steps,
            "bytes": 0 if report is None else report.bytes_uploaded + report.bytes_downloaded,
            "wall_time_s": 0.0 if report is None else report.wall_time_s,
            "shots": 0 if report is None else report.shots_used,
            "total_bytes": self._total_bytes,
            "total_wall_time_s": self._total_time,
            "total_shots": self._total_shots,
            "cost": 0.0 if report is None else self._last_cost,
            "total_cost": self._total_cost,
            "objective": self.objective_value(),
            "stopped": stopped,
            "target_reached": self._reached,
            "rewards": terms,
        }

    @property
    def val_accuracy(self) -> float:
        """Validation accuracy of the current global model."""
        return self._val_acc

    def objective_value(self) -> float:
        """The episode's objective (``config.objective``) if it ended now: lower is better."""
        cfg = self.config
        return self._objective(
            EpisodeOutcome(
                rounds=self.client_state.rounds,
                total_cost=self._total_cost,
                reached=self._reached,
                final_accuracy=self._accuracy,
                round_budget=self._budget,
                cost_budget=cfg.cost_budget,
                cost_scale=cfg.cost_scale,
                cost_weight=cfg.cost_weight,
            )
        )

    def _apply_report(self, report: RoundReport, selected: np.ndarray) -> None:
        st = self.client_state
        st.rounds += 1
        mask = np.asarray(selected, dtype=bool)
        st.last_selected[mask] = st.rounds
        st.times_selected += mask
        if report.clients:
            rows = np.array([(c.client_id, c.loss_before, c.update_norm, c.update_cosine) for c in report.clients])
            ids = rows[:, 0].astype(np.intp)
            st.last_loss[ids] = rows[:, 1] / self._scales.loss
            self._update_norm[ids] = np.tanh(rows[:, 2] / self._scales.norm)
            self._cosine[ids] = rows[:, 3]
        self._prev_val_acc, self._prev_val_loss = self._val_acc, self._val_loss
        self._val_acc = report.val_accuracy
        self._val_loss = report.val_loss
        self._total_bytes += report.bytes_uploaded + report.bytes_downloaded
        self._total_time += report.wall_time_s
        self._total_shots += report.shots_used
        self._last_cost = report.wall_time_s + self.config.shot_price * report.shots_used
        self._total_cost += self._last_cost
        self._accuracy = _accuracy(report.test_accuracy, report.val_accuracy)
        self._last_lr = report.lr
        self._last_steps = report.local_steps
        self._read_availability()

    # ---------------------------------------------------------------------------------------- observations
    def _observation(self) -> Any:
        c = self._client_obs
        index = self.layout.client_index
        for name, column in self._client_features().items():
            c[:, index[name]] = column
        g = self._global_features()
        globals_ = np.array([g[name] for name in self.layout.global_features], dtype=np.float32)
        obs = np.concatenate((c.ravel(), globals_))
        if not np.isfinite(obs).all():
            bad = [name for name, value in g.items() if not math.isfinite(value)] or ["a client feature"]
            raise FloatingPointError(f"{type(self).__name__}: observation is not finite ({', '.join(bad)})")
        np.minimum(obs, self._obs_high, out=obs)
        np.maximum(obs, self._obs_low, out=obs)
        if self._dict_obs:
            return {
                "clients": obs[: self.layout.client_size].reshape(self.n_clients, self.layout.n_client_features),
                "global": obs[self.layout.client_size :],
            }
        return obs

    def _client_features(self) -> dict[str, np.ndarray]:
        """The client features that change from round to round, by name (the others are static)."""
        st = self.client_state
        return {
            "last_loss": st.last_loss,
            "rounds_since_selected": (st.rounds - st.last_selected) / self._budget,
            "times_selected": st.times_selected / self._budget,
            "available": st.available,
            "last_update_norm": self._update_norm,
            "update_cosine": self._cosine,
        }

    def _global_features(self) -> dict[str, float]:
        """The global features by name (before clipping to their bounds)."""
        st = self.client_state
        budget = self._budget
        ln_k = self._scales.loss
        return {
            "round_fraction": st.rounds / budget,
            "val_accuracy": self._val_acc,
            "val_loss": self._val_loss / ln_k,
            "val_accuracy_change": self._val_acc - self._prev_val_acc,
            "val_loss_change": (self._val_loss - self._prev_val_loss) / ln_k,
            "cumulative_bytes": self._total_bytes / (budget * self._scales.bytes),
            "cumulative_wall_time": self._total_time / (budget * self._scales.time),
            "cumulative_shots": self._total_shots / (budget * self._scales.shots),
            "learning_rate": math.log10(self._last_lr / self.lr_map.base_lr),
            "local_steps": self._last_steps / self.config.local_steps_range[1],
            "available_fraction": np.count_nonzero(st.available) / self.n_clients,
            "target_gap": 0.0 if self._target is None else self._target - self._val_acc,
            "cost_spent": self._total_cost / self._cost_reference,
        }

    def action_masks(self) -> np.ndarray:
        """Which action values are allowed now, in sb3-contrib's ``MaskablePPO`` format.

        Selecting an unavailable client is masked out (it would only drop out); every other choice is
        allowed. For ``Box`` actions the mask has one entry per action dimension (for top-k scores: the
        clients that are available).
        """
        return self.action_codec.mask(self.client_state.available)

    # ---------------------------------------------------------------------------------------------- render
    def render(self) -> str | np.ndarray | None:
        """Render the episode so far: ``ansi`` a per-round table, ``rgb_array`` accuracy and cost curves."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array' to gym.make")
            return None
        history = getattr(self, "_history", [])
        title = f"{self.spec.id if self.spec else type(self).__name__}"
        if self.render_mode == "ansi":
            return render_ansi(history, title)
        return render_rgb_array(history, title)


def _preset_names(presets: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(presets, str) or not all(isinstance(name, str) for name in presets):
        raise ConfigError(f"{what} presets: must be a sequence of env preset names, got {presets!r}")
    return tuple(presets)


def _accuracy(test: float, val: float) -> float:
    """Test accuracy when the federation evaluates the test split (not NaN), else validation accuracy."""
    return float(val if test != test else test)


def _none_if_nan(value: float) -> float | None:
    return None if value != value else float(value)
