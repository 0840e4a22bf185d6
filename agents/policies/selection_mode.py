"""Deterministic client selection that keeps the number of clients the policy means to select.

A selection policy samples every client independently: client ``i`` trains with probability ``p_i``. The
deterministic action SB3 takes (``predict(..., deterministic=True)``, evaluation callbacks) is each client's own
mode, ``p_i > 0.5``; a policy that selects each of 10 similar clients with ``p_i = 0.4`` (4 clients per round on
average) then deterministically selects none. Measured on ``QFL/ClientSelection-v0`` after 8k PPO steps: the
equivariant policies reached the target in every sampled episode and in none of the deterministic ones.

The ``expected_count`` mode selects the ``m = round(sum_i p_i)`` clients with the highest ``p_i`` (ties by the
lower index; masked clients have ``p_i = 0``, so they are never selected). It changes only the deterministic
action: sampling, log-probabilities and training are those of the independent Bernoulli policy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from sb3_contrib.common.maskable.distributions import MaskableMultiCategoricalDistribution
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    Distribution,
    MultiCategoricalDistribution,
)
from typing_extensions import override

__all__ = ["SELECTION_MODES", "expected_count_distribution", "top_expected_count"]

#: Deterministic selection modes: ``mode`` (each client's own mode, SB3's) or ``expected_count``.
SELECTION_MODES = ("expected_count", "mode")


def top_expected_count(p_on: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` 0/1: the ``round(sum p_on)`` entries of each row with the highest ``p_on``."""
    count = torch.round(p_on.sum(dim=-1, keepdim=True))
    ranks = torch.argsort(torch.argsort(-p_on, dim=-1, stable=True), dim=-1)
    return (ranks < count).to(p_on.dtype)


class ExpectedCountBernoulli(BernoulliDistribution):
    """SB3's Bernoulli (``MultiBinary(N)``) with the ``expected_count`` deterministic action."""

    @override
    def mode(self) -> torch.Tensor:
        return top_expected_count(self.distribution.probs)


class _CategoricalSelection(ABC):
    """A multi-categorical whose first ``n_clients`` components are binary client bits."""

    n_clients: int

    @abstractmethod
    def _components(self) -> list:
        """The per-component categorical distributions."""

    def mode(self) -> torch.Tensor:
        actions = super().mode()  # type: ignore[misc]
        p_on = torch.stack([d.probs[:, 1] for d in self._components()[: self.n_clients]], dim=1)
        actions[:, : self.n_clients] = top_expected_count(p_on).to(actions.dtype)
        return actions


class ExpectedCountMultiCategorical(_CategoricalSelection, MultiCategoricalDistribution):
    """SB3's multi-categorical (FullControl's ``MultiDiscrete``) with the ``expected_count`` client bits."""

    @override
    def _components(self) -> list:
        return self.distribution


class MaskableExpectedCountMultiCategorical(_CategoricalSelection, MaskableMultiCategoricalDistribution):
    """sb3-contrib's masked multi-categorical / Bernoulli with the ``expected_count`` client bits."""

    @override
    def _components(self) -> list:
        return self.distributions


def expected_count_distribution(dist: Distribution, n_clients: int) -> Distribution:
    """The ``expected_count`` form of a selection distribution whose first ``n_clients`` components are binary.

    Returns ``dist`` itself when it has no such components (e.g. Gaussian scores, categorical decisions).
    """
    if type(dist) is BernoulliDistribution:
        return ExpectedCountBernoulli(dist.action_dims)
    masked = isinstance(dist, MaskableMultiCategoricalDistribution)  # masked Bernoulli included
    if not (masked or type(dist) is MultiCategoricalDistribution):
        return dist
    dims = list(dist.action_dims)
    if len(dims) < n_clients or any(d != 2 for d in dims[:n_clients]):
        return dist
    new = (MaskableExpectedCountMultiCategorical if masked else ExpectedCountMultiCategorical)(dims)
    new.n_clients = n_clients
    return new
