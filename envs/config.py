"""The env config: validated once in ``__init__``, never in ``step``.

An env's config is resolved in three layers, each a plain dict deep-merged over the previous one:

1. ``default_config()`` of the env class (the base class's Python dict, then the env's YAML preset in
   ``configs/envs/``), then the variant's presets (the registration kwargs ``presets``, e.g. ``("hard",)``),
2. the ``config={...}`` passed to ``gym.make`` / the constructor,
3. the ``federation`` sub-dict is merged over the federation preset named by ``federation_preset``
   (``configs/federations/<name>.yaml``).

The result is validated by :class:`EnvConfig`; a bad value raises :class:`~qflgym.config.ConfigError`
naming the field (dotted path), the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from qflgym.config import (
    ConfigError,
    StrictModel,
    build_config,
    deep_merge,
    load_preset,
    register_config_model,
    registered_name,
)
from qflgym.qfl_core.config import FederationConfig

__all__ = ["EnvConfig", "env_preset", "merge_presets", "resolve_env_config"]


class EnvConfig(StrictModel):
    """Everything that defines a QFL env (defaults live in ``default_config()`` of each env class)."""

    federation_preset: str
    """Federation preset in ``configs/federations/`` that ``federation`` is merged over."""
    federation: FederationConfig
    """The federation (the preset deep-merged with the ``federation`` overrides of the env config)."""
    federation_seed: int | None = Field(ge=0)
    """``None``: every ``reset`` draws a new federation seed from ``np_random`` (a new data partition and
    client population per episode). An integer: the same federation in every episode (faster resets)."""
    round_budget: int = Field(ge=1, le=100_000)
    """Rounds per episode: the env truncates after them and reports them as ``env.spec.max_episode_steps``."""
    target_accuracy: float | None = Field(gt=0.0, le=1.0)
    """Validation accuracy that ends the episode (``terminated``), or ``None`` for no target."""
    selection_rule: str
    """Who trains when the controller does not select (StepSize, RoundTermination): a name from
    ``qflgym.envs.rules.SELECTION_RULES`` (random-k, all-clients, loss-greedy, least-recent)."""
    clients_per_round: int | None = Field(ge=1)
    """``k`` of the selection rule; ``None`` = ``ceil(0.3 N)``."""
    selection_budget: int | None = Field(ge=1)
    """ClientSelection: ``None`` = ``MultiBinary(N)`` actions; ``k`` = a ``Box`` of scores, top k train."""
    lr_multiplier: float = Field(gt=0.0)
    """Fixed multiplier of the federation's lr when the controller does not set the lr."""
    lr_multiplier_range: tuple[float, float]
    """``[low, high]`` multipliers of the federation's lr reachable by step-size actions (log scale)."""
    lr_bins: int = Field(ge=1, le=64)
    """FullControl only: number of log-spaced learning rates in ``lr_multiplier_range``."""
    local_steps: int | None = Field(ge=1)
    """Fixed local steps when the controller does not set them; ``None`` = the federation's default."""
    local_steps_range: tuple[int, int]
    """``[low, high]`` local steps reachable by step-size actions."""
    observation: Literal["flat", "dict"]
    """``flat``: one ``Box`` (SB3 ``MlpPolicy``); ``dict``: ``{"clients": [N, F], "global": [G]}``."""
    features: Literal["v0", "v1"]
    """Observation version (``qflgym.envs.observation.FEATURE_SETS``): ``v1`` adds each client's cost of one
    local step and the cost spent so far."""
    objective: str
    """The episode objective reported in ``info["objective"]`` (lower is better): a name from
    ``qflgym.envs.objectives.OBJECTIVES`` (rounds_to_target, cost_to_target, error_plus_cost)."""
    shot_price: float = Field(ge=0.0)
    """Cost of one shot in seconds-equivalents: a round costs ``wall_time_s + shot_price x shots``."""
    cost_scale: float = Field(gt=0.0)
    """Reference cost: the unit of the ``cost`` reward term, the ``step_*`` features and ``cost_weight``."""
    cost_budget: float | None = Field(gt=0.0)
    """The episode is truncated once its cost reaches this (``None``: only the round budget ends it);
    ``cost_to_target`` counts an episode that missed the target at this value."""
    cost_weight: float = Field(ge=0.0)
    """``error_plus_cost``: accuracy points the operator pays per ``cost_scale`` of cost."""
    reward_terms: dict[str, Callable[..., float]]
    """Extra reward terms: callables ``term(ctx) -> float`` keyed by the name used in ``reward_weights``."""
    reward_weights: dict[str, float]
    """Weight of each reward term (registered names or keys of ``reward_terms``); all are reported in
    ``info["rewards"]``."""

    _selection_rule = field_validator("selection_rule")(registered_name("qflgym.envs.rules:SELECTION_RULES"))
    _objective = field_validator("objective")(registered_name("qflgym.envs.objectives:OBJECTIVES"))

    @field_validator("clients_per_round", "selection_budget")
    @classmethod
    def _at_most_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        fed = info.data.get("federation")
        if value is not None and fed is not None and value > fed.clients.n_clients:
            raise ValueError(f"must be in [1, n_clients={fed.clients.n_clients}] or null")
        return value

    @field_validator("lr_multiplier_range")
    @classmethod
    def _lr_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return value

    @field_validator("local_steps_range")
    @classmethod
    def _steps_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not (1 <= low <= high <= 1000):
            raise ValueError("must be [low, high] with 1 <= low <= high <= 1000")
        return value

    @field_validator("reward_weights")
    @classmethod
    def _known_terms(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        from .rewards import REWARDS

        custom = info.data.get("reward_terms") or {}
        for name in value:
            if name not in custom and name not in REWARDS:
                allowed = sorted(set(REWARDS.names()) | set(custom))
                raise ValueError(f"unknown reward term {name!r}; allowed: {', '.join(allowed)}")
        return value

    @property
    def n_clients(self) -> int:
        """N."""
        return self.federation.clients.n_clients

    @property
    def k(self) -> int:
        """Clients per round of the selection rule."""
        n = self.n_clients
        return self.clients_per_round if self.clients_per_round is not None else max(1, math.ceil(0.3 * n))

    @property
    def fixed_local_steps(self) -> int:
        """Local steps used when the controller does not set them."""
        return self.local_steps if self.local_steps is not None else self.federation.training.local_steps

    @property
    def fixed_lr(self) -> float:
        """Learning rate used when the controller does not set it."""
        return self.federation.training.lr * self.lr_multiplier


register_config_model(EnvConfig)


@lru_cache(maxsize=64)
def _cached_preset(group: str, name: str) -> dict[str, Any]:
    return load_preset(group, name)


def env_preset(name: str) -> dict[str, Any]:
    """A copy of the env preset ``configs/envs/<name>.yaml``."""
    return deep_merge({}, _cached_preset("envs", name))


def merge_presets(config: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """Deep-merge the env presets ``configs/envs/<name>.yaml`` over ``config``, in order."""
    merged = dict(config)
    for name in names:
        merged = deep_merge(merged, env_preset(name))
    return merged


def resolve_env_config(defaults: Mapping[str, Any], config: Mapping[str, Any] | None, what: str) -> EnvConfig:
    """Merge ``config`` over ``defaults``, the federation overrides over their preset, and validate.

    Args:
        defaults: The env class's ``default_config()``.
        config: User overrides (``gym.make(id, config=...)``).
        what: Name for error messages (the env class).

    Raises:
        ConfigError: Naming each bad field and what is allowed.
    """
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(f"{what} config must be a mapping, got {type(config).__name__}")
    merged = deep_merge(defaults, config or {})
    preset = merged.get("federation_preset")
    overrides = merged.get("federation") or {}
    if isinstance(overrides, FederationConfig):
        overrides = overrides.model_dump()
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"invalid {what} config:\n  federation: must be a mapping (got {overrides!r})")
    if not isinstance(preset, str):
        raise ConfigError(f"invalid {what} config:\n  federation_preset: must be a preset name (got {preset!r})")
    try:
        base = _cached_preset("federations", preset)
    except ConfigError as err:
        raise ConfigError(f"invalid {what} config:\n  federation_preset: {err}") from None
    merged["federation"] = deep_merge(base, overrides)
    return build_config(EnvConfig, merged, what)
