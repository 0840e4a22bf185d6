"""Per-client, permutation-equivariant actor-critic policies for PPO, A2C and sb3-contrib's MaskablePPO.

The :class:`~qflgym.agents.policies.set_encoder.ClientSetExtractor` embeds every client row with shared
weights; then

* the actor MLP (``net_arch["pi"]``) runs on every row, and the action head reads the per-client part of the
  action from the client rows (one shared linear layer: a Bernoulli logit per client for ``MultiBinary(N)``,
  two logits per client under MaskablePPO's masks, a score mean per client for the top-k ``Box(N)`` with one
  shared ``log_std``) and the rest from the summary row (``Discrete``, the ``Box(2)`` of StepSize, and the
  learning-rate/steps/stop entries of FullControl's ``MultiDiscrete``);
* the critic MLP (``net_arch["vf"]``) and the value read the summary row only.

So permuting the clients permutes the per-client outputs and leaves the value and the pooled outputs unchanged,
and no weight depends on N: :mod:`qflgym.agents.policies.transfer` rebuilds a trained policy for another N.

Which part of an action is per-client (``per_client=None``, the default, decides from the spaces): all of a
``MultiBinary(N)``; all of a ``Box`` of shape ``(N,)``; the first N entries of a ``MultiDiscrete`` whose first N
sizes are equal (FullControl's client bits); nothing of a ``Discrete``. With 2 clients a ``Box(2)`` reads as
per-client, so pass ``per_client=False`` to StepSize with 2 clients.

Use by name (``policy: EquivariantPolicy`` in ``qflgym train``'s zoo YAML; :func:`resolve_policy` picks the
class that fits the algorithm) or by class (``PPO(EquivariantActorCriticPolicy, env, policy_kwargs=...)``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Self

import numpy as np
import torch
from gymnasium import spaces
from pydantic import Field, field_validator, model_validator
from sb3_contrib.common.maskable.distributions import (
    MaskableCategoricalDistribution,
    MaskableMultiCategoricalDistribution,
)
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from torch import nn
from typing_extensions import override

from qflgym.agents.policies.selection_mode import expected_count_distribution
from qflgym.agents.policies.set_encoder import ClientSetExtractor, ClientSplit
from qflgym.config import ConfigError, StrictModel, build_config, registered_name
from qflgym.registry import Registry

__all__ = [
    "POLICIES",
    "ActionLayout",
    "EquivariantActorCriticPolicy",
    "EquivariantConfig",
    "EquivariantMixin",
    "MaskableEquivariantActorCriticPolicy",
    "PolicyFamily",
    "centre_on_cohort",
    "resolve_policy",
]


class EquivariantConfig(StrictModel):
    """The equivariant policy's own ``policy_kwargs`` (the others go to SB3's policy unchanged)."""

    pooling: str = "mean_max"
    """How each client sees the others: ``mean``, ``max``, ``mean_max`` (Deep Sets) or ``attention``."""
    embed_dim: int = Field(64, ge=1)
    """Width of the client embeddings and of the summary."""
    attention_heads: int = Field(4, ge=1)
    """Heads of the ``attention`` pooling (``embed_dim`` must be a multiple)."""
    per_client: bool | None = None
    """Whether the action has a per-client part; None decides from the spaces (see the module docstring)."""
    n_client_features: int | None = Field(None, ge=1)
    """F of a flat observation (default: the suite's per-client features); unused for Dict observations."""
    n_global_features: int | None = Field(None, ge=0)
    """G of a flat observation (default: the suite's global features); unused for Dict observations."""
    deterministic_selection: Literal["expected_count", "mode"] = "expected_count"
    """Deterministic client bits: the ``round(sum p)`` most likely clients, or each client's own mode (SB3's);
    see :mod:`qflgym.agents.policies.selection_mode`."""
    cohort_size: int | None = Field(None, ge=1)
    """For a top-k ``Box(N)`` of client scores: shift the score means so that exactly this many are positive
    (the midpoint of the k-th and (k+1)-th highest mean is moved to 0), so the deterministic action trains a
    cohort of this size, as FAVOR's and Oort's fixed K per round; None leaves the means as the network outputs
    them. Sampled scores vary around the shifted means."""

    _pooling = field_validator("pooling")(registered_name("qflgym.agents.policies.set_encoder:POOLINGS"))

    @model_validator(mode="after")
    def _heads_divide(self) -> Self:
        if self.pooling == "attention" and self.embed_dim % self.attention_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be a multiple of attention_heads={self.attention_heads}")
        return self


def centre_on_cohort(scores: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``scores [B, N]`` shifted per row so that exactly its ``k`` highest (available) are positive.

    The midpoint of the k-th and (k+1)-th highest score moves to 0 (permutation-equivariant, differentiable
    almost everywhere); with ``N <= k`` every score is made positive (the lowest moves to 0.5). With ``valid``
    (``[B, N]``, 1 for the available rows; each row needs more than ``k``) only available rows set the cutoff.
    """
    if valid is None and scores.shape[-1] <= k:
        return scores - scores.amin(dim=-1, keepdim=True) + 0.5
    ranked = scores if valid is None else scores.masked_fill(valid <= 0, float("-inf"))
    top = torch.topk(ranked, k + 1, dim=-1).values
    return scores - 0.5 * (top[..., k - 1 : k] + top[..., k : k + 1])


@dataclass(frozen=True)
class ActionLayout:
    """How the action head's output is laid out: the per-client parameters (client-major), then the pooled ones.

    Attributes:
        per_client: Distribution parameters per client (0: no per-client part).
        pooled: Distribution parameters read from the summary row.
        log_std_dim: Size of the Gaussian ``log_std`` (1, shared by all clients, for a per-client ``Box``; the
            action size for a pooled one; 0 for discrete actions).
    """

    per_client: int
    pooled: int
    log_std_dim: int = 0

    @classmethod
    def of(cls, action_space: spaces.Space, dist: Distribution, n_clients: int, per_client: bool | None) -> Self:
        """The layout of ``action_space`` under the distribution ``dist`` with ``n_clients`` clients.

        Raises:
            ConfigError: ``per_client=True`` for an action without N equal per-client components, or an
                unsupported distribution.
        """
        params = _component_params(action_space, dist)
        split = _auto_per_client(action_space, n_clients) if per_client is None else per_client
        if split and not (len(params) >= n_clients and len(set(params[:n_clients])) == 1):
            raise ConfigError(
                f"per_client=True, but the action space {action_space} has no N={n_clients} equal per-client "
                "components; allowed: per_client=None (decide from the spaces) or False"
            )
        gaussian = isinstance(dist, DiagGaussianDistribution)
        if split:
            layout = cls(params[0], sum(params[n_clients:]), 1 if gaussian else 0)
        else:
            layout = cls(0, sum(params), len(params) if gaussian else 0)
        return layout


def _component_params(action_space: spaces.Space, dist: Distribution) -> list[int]:
    """The distribution parameters of each action component, in the action's order."""
    if isinstance(dist, DiagGaussianDistribution | BernoulliDistribution):
        return [1] * int(np.prod(action_space.shape))
    if isinstance(dist, CategoricalDistribution | MaskableCategoricalDistribution):
        return [int(dist.action_dim)]
    if isinstance(dist, MultiCategoricalDistribution | MaskableMultiCategoricalDistribution):  # masked Bernoulli too
        return [int(d) for d in dist.action_dims]
    raise ConfigError(
        f"the equivariant policy does not support the distribution {type(dist).__name__} of {action_space}; "
        "allowed: Bernoulli, Categorical, MultiCategorical, DiagGaussian (use_sde=False) and their masked forms"
    )


def _auto_per_client(action_space: spaces.Space, n_clients: int) -> bool:
    if isinstance(action_space, spaces.MultiBinary | spaces.Box):
        return action_space.shape == (n_clients,)
    if isinstance(action_space, spaces.MultiDiscrete):
        nvec = action_space.nvec.reshape(-1)
        return nvec.size >= n_clients and len(set(nvec[:n_clients].tolist())) == 1
    return False


class ClientActionHead(nn.Module):
    """Distribution parameters from the actor latents ``[B, N + 1, L]``: per-client rows, then the summary row.

    Args:
        latent_dim: L.
        layout: The output layout.
    """

    def __init__(self, latent_dim: int, layout: ActionLayout, cohort_size: int | None = None) -> None:
        super().__init__()
        self.client = nn.Linear(latent_dim, layout.per_client) if layout.per_client else None
        self.pooled = nn.Linear(latent_dim, layout.pooled) if layout.pooled else None
        self.cohort_size = cohort_size

    @override
    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.client is not None:
            client = self.client(latent[:, :-1]).flatten(1)
            parts.append(client if self.cohort_size is None else centre_on_cohort(client, self.cohort_size))
        if self.pooled is not None:
            parts.append(self.pooled(latent[:, -1]))
        return torch.cat(parts, dim=-1)


class SetMlpExtractor(MlpExtractor):
    """SB3's ``MlpExtractor`` over set features: the actor MLP runs on every row, the critic on the summary row."""

    @override
    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_net(features[:, -1])


class EquivariantMixin:
    """The shared part of the equivariant policies (mixed into SB3's and sb3-contrib's actor-critic policies)."""

    #: The policy options the mixin consumes (fields of :class:`EquivariantConfig`).
    equivariant_config: EquivariantConfig
    action_layout: ActionLayout

    def __init__(
        self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Any, **kwargs: Any
    ) -> None:
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in EquivariantConfig.model_fields}
        config = build_config(EquivariantConfig, own, "EquivariantPolicy policy_kwargs")
        _check_sb3_kwargs(type(self), kwargs)
        self.equivariant_config = config
        self._split = ClientSplit.from_space(observation_space, config.n_client_features, config.n_global_features)
        activation_fn = kwargs.setdefault("activation_fn", nn.ReLU)
        kwargs.setdefault("net_arch", {"pi": [config.embed_dim], "vf": [config.embed_dim]})
        kwargs["features_extractor_class"] = ClientSetExtractor
        kwargs["features_extractor_kwargs"] = {
            "pooling": config.pooling,
            "embed_dim": config.embed_dim,
            "attention_heads": config.attention_heads,
            "activation_fn": activation_fn,
            "n_client_features": config.n_client_features,
            "n_global_features": config.n_global_features,
        }
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)  # type: ignore[call-arg]

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = SetMlpExtractor(
            self.features_dim, net_arch=self.net_arch, activation_fn=self.activation_fn, device=self.device
        )

    def _build(self, lr_schedule: Any) -> None:
        self._build_mlp_extractor()
        self.action_layout = ActionLayout.of(
            self.action_space, self.action_dist, self._split.n_clients, self.equivariant_config.per_client
        )
        if self.action_layout.per_client and self.equivariant_config.deterministic_selection == "expected_count":
            self.action_dist = expected_count_distribution(self.action_dist, self._split.n_clients)
        cohort_size = self.equivariant_config.cohort_size
        if cohort_size is not None and not (
            self.action_layout.per_client == 1 and self.action_layout.log_std_dim and not self.action_layout.pooled
        ):
            raise ConfigError(
                f"cohort_size={cohort_size} needs a top-k Box(N) of client scores, got the action space "
                f"{self.action_space}; allowed: cohort_size=None"
            )
        self.action_net = ClientActionHead(self.mlp_extractor.latent_dim_pi, self.action_layout, cohort_size)
        if self.action_layout.log_std_dim:
            self.log_std = nn.Parameter(torch.full((self.action_layout.log_std_dim,), float(self.log_std_init)))
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            extractors = {self.pi_features_extractor, self.vf_features_extractor}
            gains = {**dict.fromkeys(extractors, np.sqrt(2)), self.mlp_extractor: np.sqrt(2)}
            for module, gain in {**gains, self.action_net: 0.01, self.value_net: 1.0}.items():
                module.apply(partial(self.init_weights, gain=gain))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        del data["features_extractor_class"], data["features_extractor_kwargs"]
        return {**data, **self.equivariant_config.model_dump()}


def _sb3_base(policy_class: type) -> type:
    """The SB3 / sb3-contrib policy class that ``policy_class`` extends."""
    return next(c for c in policy_class.__mro__ if c.__module__.startswith(("stable_baselines3", "sb3_contrib")))


def _check_sb3_kwargs(policy_class: type, kwargs: dict[str, Any]) -> None:
    """Reject keyword arguments neither the equivariant policy nor SB3's base policy accepts (naming both sets)."""
    params = inspect.signature(_sb3_base(policy_class).__init__).parameters
    sb3_allowed = [p for p in params if p not in ("self", "observation_space", "action_space", "lr_schedule")]
    fixed = ("features_extractor_class", "features_extractor_kwargs")
    for key in kwargs:
        if key in fixed:
            raise ConfigError(
                f"EquivariantPolicy policy_kwargs: {key!r} is set by the equivariant policy; configure the encoder "
                f"with {', '.join(EquivariantConfig.model_fields)}"
            )
        if key not in sb3_allowed:
            allowed = sorted({*EquivariantConfig.model_fields, *sb3_allowed} - set(fixed))
            raise ConfigError(f"EquivariantPolicy policy_kwargs: unknown key {key!r}; allowed: {', '.join(allowed)}")


class EquivariantActorCriticPolicy(EquivariantMixin, ActorCriticPolicy):
    """The equivariant policy for PPO and A2C (``MultiBinary``, ``Box``, ``Discrete``, ``MultiDiscrete`` actions).

    Args:
        observation_space: A qflgym observation space (flat or ``Dict``).
        action_space: The env's action space.
        lr_schedule: Learning-rate schedule.
        **kwargs: :class:`EquivariantConfig`'s fields plus SB3 ``ActorCriticPolicy``'s keyword arguments
            (``net_arch`` applies per row: default ``dict(pi=[embed_dim], vf=[embed_dim])``; ``activation_fn``
            default ``nn.ReLU``; ``use_sde`` is not supported).
    """


class MaskableEquivariantActorCriticPolicy(EquivariantMixin, MaskableActorCriticPolicy):
    """The equivariant policy for sb3-contrib's MaskablePPO: masks apply to the per-client logits directly.

    Args:
        observation_space: A qflgym observation space (flat or ``Dict``).
        action_space: The env's action space (``MultiBinary``, ``Discrete`` or ``MultiDiscrete``).
        lr_schedule: Learning-rate schedule.
        **kwargs: As for :class:`EquivariantActorCriticPolicy` (MaskablePPO's policy keyword arguments).
    """


@dataclass(frozen=True)
class PolicyFamily:
    """One named policy with a class per algorithm family.

    Attributes:
        classes: The policy classes; the one that subclasses an algorithm's ``MlpPolicy`` serves it.
    """

    classes: tuple[type, ...]

    def for_algorithm(self, algo_class: type, name: str) -> type:
        """The class for ``algo_class`` (an SB3 algorithm).

        Raises:
            ValueError: The family has no class for the algorithm (naming the ones it has).
        """
        base = getattr(algo_class, "policy_aliases", {}).get("MlpPolicy")
        for cls in self.classes:
            if base is not None and issubclass(cls, base):
                return cls
        bases = ", ".join(_sb3_base(c).__name__ for c in self.classes)
        raise ValueError(f"policy {name!r} has no variant for {algo_class.__name__}; it extends {bases}")


#: Policies selectable by name in a zoo YAML's ``policy:`` (besides SB3's own aliases).
POLICIES: Registry[PolicyFamily] = Registry("policy")
POLICIES.add("EquivariantPolicy", PolicyFamily((EquivariantActorCriticPolicy, MaskableEquivariantActorCriticPolicy)))


def resolve_policy(policy: str | type, algo_class: type) -> str | type:
    """The class of a :data:`POLICIES` name for ``algo_class``; any other value (SB3 aliases, classes) unchanged."""
    if isinstance(policy, str) and policy in POLICIES:
        return POLICIES.get(policy).for_algorithm(algo_class, policy)
    return policy
