"""The engine of the QFL envs: one round from ``env.step(action)`` to ``Federation.run_round`` and back.

Every env of the suite is a :class:`QFLEnv` that differs only in its action codec (what the controller
decides) and its ``default_config()``. The step is the hot path: the action is decoded by the codec, the
knobs the controller does not set are filled from the config (fixed lr and local steps, a selection rule),
the federation runs the round, and the observation, reward terms and info are built from the
:class:`~qflgym.qfl_core.federation.RoundReport` with a few vectorized numpy operations on persistent arrays.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from qflgym.qfl_core.federation import Federation, RoundReport

from .actions import ActionCodec, ControlDecision, LearningRateMap
from .config import EnvConfig, env_preset, resolve_env_config
from .observation import CLIENT_FEATURES, LABEL_FEATURES, MAX_LABEL_CLASSES, ObservationLayout
from .render import RoundRecord, render_ansi, render_rgb_array
from .rewards import BUILTIN_TERMS, RewardContext, resolve_terms
from .rules import SELECTION_RULES, ClientState

__all__ = ["QFLEnv", "merge_presets"]

_C = {name: i for i, name in enumerate(CLIENT_FEATURES)}
_LAST_LOSS, _ROUNDS_SINCE, _TIMES_SELECTED = (
    _C["last_loss"],
    _C["rounds_since_selected"],
    _C["times_selected"],
)
_AVAILABLE, _UPDATE_NORM, _COSINE = _C["available"], _C["last_update_norm"], _C["update_cosine"]
_STATE_VERSION = 1


def merge_presets(config: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """Deep-merge the env presets ``configs/envs/<name>.yaml`` over ``config``, in order."""
    from qflgym.qfl_core.config import deep_merge

    merged = dict(config)
    for name in names:
        merged = deep_merge(merged, env_preset(name))
    return merged


class QFLEnv(gym.Env, ABC):
    """Base class of the QFL envs (not registered itself); see the subclasses for the Markdown docs.

    Args:
        config: Overrides of :meth:`default_config` (nested dicts are deep-merged).
        render_mode: ``None``, ``"ansi"`` or ``"rgb_array"``.

    Attributes:
        config: The validated :class:`~qflgym.envs.config.EnvConfig`.
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
            "selection_rule": "random_k",
            "clients_per_round": None,
            "selection_budget": None,
            "lr_multiplier": 1.0,
            "lr_multiplier_range": [0.1, 10.0],
            "lr_bins": 7,
            "local_steps": None,
            "local_steps_range": [1, 5],
            "observation": "flat",
            "reward_terms": {},
            "reward_weights": {name: 0.0 for name in BUILTIN_TERMS} | {"accuracy_gain": 1.0},
        }

    def __init__(self, config: Mapping[str, Any] | None = None, render_mode: str | None = None) -> None:
        super().__init__()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported; allowed: None, "
                + ", ".join(self.metadata["render_modes"])
            )
        self.render_mode = render_mode
        self.config: EnvConfig = resolve_env_config(self.default_config(), config, type(self).__name__)
        cfg = self.config
        self.n_clients = cfg.n_clients
        self.layout = ObservationLayout(self.n_clients)
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
        self._reward_names, self._reward_fns, self._reward_weights = resolve_terms(
            dict(cfg.reward_weights), dict(cfg.reward_terms)
        )
        self.federation: Federation | None = None
        self._fed_seed: int | None = None
        self._fed_cache: OrderedDict[int, tuple[Federation, dict[str, Any]]] = OrderedDict()
        self.last_report: RoundReport | None = None
        self.last_decision: ControlDecision | None = None
        self._episode_over = False
        self.client_state = ClientState.fresh(self.n_clients)
        self._history: list[RoundRecord] = []

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
            fed = Federation(self.config.federation, seed)
            entry = (fed, copy.deepcopy(fed.state_dict()))
            self._fed_cache[seed] = entry
            while len(self._fed_cache) > self.federation_cache_size:
                self._fed_cache.popitem(last=False)
        else:
            self._fed_cache.move_to_end(seed)
            entry[0].load_state_dict(copy.deepcopy(entry[1]))
        self.federation = entry[0]
        self._fed_seed = seed
        self._static_features()

    def _static_features(self) -> None:
        fed = self.federation
        n = self.n_clients
        cfg = fed.config
        self._ln_k = math.log(fed.n_classes) if fed.n_classes > 1 else 1.0
        sizes = np.array([s.size for s in fed.client_stats], dtype=np.float64)
        skew = np.array([s.skew for s in fed.client_stats], dtype=np.float64)
        shots = np.array([p.shots or 0 for p in fed.profiles], dtype=np.float64)
        depol = np.array([p.depolarizing for p in fed.profiles])
        readout = np.array([p.readout_error for p in fed.profiles])
        latency = np.array([p.latency_s for p in fed.profiles])
        c = np.zeros((n, len(CLIENT_FEATURES)), dtype=np.float32)
        c[:, _C["data_size"]] = sizes / sizes.max()
        c[:, _C["label_skew"]] = skew
        if fed.n_classes > MAX_LABEL_CLASSES:
            raise ValueError(
                f"{type(self).__name__}: the federation has {fed.n_classes} classes; the observation's "
                f"label_frac_* features cover at most {MAX_LABEL_CLASSES}"
            )
        hist = np.array([s.label_histogram for s in fed.client_stats], dtype=np.float64)
        fractions = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
        first = _C[LABEL_FEATURES[0]]
        c[:, first : first + fractions.shape[1]] = fractions
        c[:, _C["noise_level"]] = 1.0 - (1.0 - 4.0 * depol / 3.0) ** cfg.circuit.n_layers * (1.0 - 2.0 * readout)
        c[:, _C["shot_noise"]] = np.where(shots > 0, 1.0 / np.sqrt(np.maximum(shots, 1.0)), 0.0)
        c[:, _C["latency"]] = latency / latency.max()
        self._client_obs = c
        # Reference scales of a round in which every client trains with the fixed lr / local steps.
        base_steps = self._fixed_steps
        per_sample = 1 + 2 * fed.spec.n_circuit_params
        executions = np.minimum(sizes, cfg.training.batch_size) * per_sample * base_steps
        self._bytes_scale = float(2 * n * fed.param_bytes)
        self._time_scale = float(cfg.server_time_s + (executions * latency).max())
        self._shots_scale = float(max((executions * shots).sum(), 1.0))
        self._norm_scale = float(cfg.training.lr * cfg.training.local_steps)
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
        return ControlDecision(selected, lr, steps, False), self._val_acc, self._val_loss

    def end_step(
        self, decision: ControlDecision, prev_acc: float, prev_loss: float, report: RoundReport | None
    ) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Second half of :meth:`step`: book the round's ``report`` (``None`` when stopping); returns step's tuple."""
        st = self.client_state
        self.last_decision = decision
        if report is not None:
            self._apply_report(report, decision.selected)
        self.last_report = report

        reached_now = False
        if self._target is not None and not self._reached and self._val_acc >= self._target:
            self._reached = reached_now = True
        ctx = RewardContext(
            report,
            decision.stop,
            reached_now,
            self._val_acc,
            self._val_loss,
            prev_acc,
            prev_loss,
            st.rounds,
            self._budget,
            self._target,
            self.federation.n_classes,
            self._bytes_scale,
            self._time_scale,
            self._shots_scale,
            self,
        )
        terms = {name: float(fn(ctx)) for name, fn in zip(self._reward_names, self._reward_fns, strict=True)}
        reward = 0.0
        for w, v in zip(self._reward_weights, terms.values(), strict=True):
            reward += w * v
        if not math.isfinite(reward):
            raise FloatingPointError(f"reward is not finite: terms {terms}")

        terminated = decision.stop or reached_now
        truncated = not terminated and self._steps >= self._budget
        self._episode_over = terminated or truncated
        obs = self._observation()
        self._history.append(
            RoundRecord(
                st.rounds,
                0 if report is None else len(report.selected),
                0 if report is None else len(report.participants),
                0 if report is None else len(report.dropped),
                self._last_lr,
                self._last_steps,
                self._val_acc,
                self._val_loss,
                self._total_bytes,
                self._total_time,
                self._total_shots,
                reward,
                decision.stop,
            )
        )
        info = {
            "round": st.rounds,
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
            "stopped": decision.stop,
            "target_reached": self._reached,
            "rewards": terms,
        }
        return obs, reward, terminated, truncated, info

    def _apply_report(self, report: RoundReport, selected: np.ndarray) -> None:
        st = self.client_state
        st.rounds += 1
        mask = np.asarray(selected, dtype=bool)
        st.last_selected[mask] = st.rounds
        st.times_selected += mask
        if report.clients:
            rows = np.array([(c.client_id, c.loss_before, c.update_norm, c.update_cosine) for c in report.clients])
            ids = rows[:, 0].astype(np.intp)
            st.last_loss[ids] = rows[:, 1] / self._ln_k
            self._update_norm[ids] = np.tanh(rows[:, 2] / self._norm_scale)
            self._cosine[ids] = rows[:, 3]
        self._prev_val_acc, self._prev_val_loss = self._val_acc, self._val_loss
        self._val_acc = report.val_accuracy
        self._val_loss = report.val_loss
        self._total_bytes += report.bytes_uploaded + report.bytes_downloaded
        self._total_time += report.wall_time_s
        self._total_shots += report.shots_used
        self._last_lr = report.lr
        self._last_steps = report.local_steps
        self._read_availability()

    # ---------------------------------------------------------------------------------------- observations
    def _observation(self) -> Any:
        st = self.client_state
        c = self._client_obs
        budget = self._budget
        c[:, _LAST_LOSS] = st.last_loss
        c[:, _ROUNDS_SINCE] = (st.rounds - st.last_selected) / budget
        c[:, _TIMES_SELECTED] = st.times_selected / budget
        c[:, _AVAILABLE] = st.available
        c[:, _UPDATE_NORM] = self._update_norm
        c[:, _COSINE] = self._cosine
        ln_k = self._ln_k
        g = np.array(
            (
                st.rounds / budget,
                self._val_acc,
                self._val_loss / ln_k,
                self._val_acc - self._prev_val_acc,
                (self._val_loss - self._prev_val_loss) / ln_k,
                self._total_bytes / (budget * self._bytes_scale),
                self._total_time / (budget * self._time_scale),
                self._total_shots / (budget * self._shots_scale),
                math.log10(self._last_lr / self.lr_map.base_lr),
                self._last_steps / self.config.local_steps_range[1],
                np.count_nonzero(st.available) / self.n_clients,
                0.0 if self._target is None else self._target - self._val_acc,
            ),
            dtype=np.float32,
        )
        obs = np.concatenate((c.reshape(-1), g))
        np.minimum(obs, self._obs_high, out=obs)
        np.maximum(obs, self._obs_low, out=obs)
        if not np.isfinite(obs).all():
            np.nan_to_num(obs, copy=False, nan=0.0)
        if self._dict_obs:
            return {
                "clients": obs[: self.layout.client_size].reshape(self.n_clients, -1),
                "global": obs[self.layout.client_size :],
            }
        return obs

    def action_masks(self) -> np.ndarray:
        """Which action values are allowed now, in sb3-contrib's ``MaskablePPO`` format.

        Selecting an unavailable client is masked out (it would only drop out); every other choice is
        allowed. For ``Box`` actions the mask has one entry per action dimension (for top-k scores: the
        clients that are available).
        """
        return self.action_codec.mask(self.client_state.available)

    # ----------------------------------------------------------------------------------------------- state
    def get_state(self) -> dict[str, Any]:
        """A snapshot from which :meth:`set_state` restores the env exactly (same next step, bit for bit).

        Covers the federation (its ``state_dict``), the env's bookkeeping and ``np_random``. Wrapper state
        (e.g. ``TimeLimit``'s step counter) is not included; the env truncates at ``round_budget`` by itself.
        """
        if self.federation is None:
            raise RuntimeError(f"{type(self).__name__}: call reset() before get_state()")
        return {
            "version": _STATE_VERSION,
            "env": type(self).__name__,
            "federation_seed": self._fed_seed,
            "federation": copy.deepcopy(self.federation.state_dict()),
            "np_random": copy.deepcopy(self.np_random.bit_generator.state),
            "client_state": self.client_state.copy(),
            "update_norm": self._update_norm.copy(),
            "cosine": self._cosine.copy(),
            "scalars": {
                "val_acc": self._val_acc,
                "val_loss": self._val_loss,
                "prev_val_acc": self._prev_val_acc,
                "prev_val_loss": self._prev_val_loss,
                "total_bytes": self._total_bytes,
                "total_time": self._total_time,
                "total_shots": self._total_shots,
                "last_lr": self._last_lr,
                "last_steps": self._last_steps,
                "steps": self._steps,
                "reached": self._reached,
                "episode_over": self._episode_over,
            },
            "history": list(self._history),
            "last_report": self.last_report,
            "last_decision": self.last_decision,
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`get_state` snapshot (from this env or another of the same class and config).

        Raises:
            ValueError: If the snapshot comes from another env class or version.
        """
        if state.get("version") != _STATE_VERSION or state.get("env") != type(self).__name__:
            raise ValueError(
                f"state was taken from {state.get('env')!r} (version {state.get('version')}), "
                f"not {type(self).__name__!r} (version {_STATE_VERSION})"
            )
        self._start_federation(int(state["federation_seed"]))
        self.federation.load_state_dict(copy.deepcopy(state["federation"]))
        if self._np_random is None:
            self._np_random = np.random.Generator(np.random.PCG64())
        self._np_random.bit_generator.state = copy.deepcopy(state["np_random"])
        self.client_state = state["client_state"].copy()
        self._update_norm = state["update_norm"].copy()
        self._cosine = state["cosine"].copy()
        s = state["scalars"]
        self._val_acc, self._val_loss = s["val_acc"], s["val_loss"]
        self._prev_val_acc, self._prev_val_loss = s["prev_val_acc"], s["prev_val_loss"]
        self._total_bytes, self._total_time, self._total_shots = (
            s["total_bytes"],
            s["total_time"],
            s["total_shots"],
        )
        self._last_lr, self._last_steps = s["last_lr"], s["last_steps"]
        self._steps, self._reached, self._episode_over = s["steps"], s["reached"], s["episode_over"]
        self._history = list(state["history"])
        self.last_report = state["last_report"]
        self.last_decision = state["last_decision"]

    # ---------------------------------------------------------------------------------------------- pickle
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.federation is not None:
            state["_pickled_env_state"] = self.get_state()
        state["federation"] = None
        state["_fed_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        snapshot = state.pop("_pickled_env_state", None)
        self.__dict__.update(state)
        if snapshot is not None:
            self.set_state(snapshot)

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


def _none_if_nan(value: float) -> float | None:
    return None if value != value else float(value)
