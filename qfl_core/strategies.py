"""Server strategies, named and split as in Flower: ``configure_fit`` then ``aggregate_fit``.

The averaging math is pure functions over ``(parameters, num_examples)`` so it can be tested against hand-computed
values. The adaptive server optimizers follow Reddi et al., "Adaptive Federated Optimization" (ICLR 2021),
Algorithm 2: the pseudo-gradient is the sample-weighted mean client update ``delta``; ``m`` and ``v`` start at
``0`` and ``tau**2``; the model moves by ``eta * m / (sqrt(v) + tau)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from qflgym.registry import Registry

from .config import StrategyConfig


def weighted_average(params: torch.Tensor, num_examples: torch.Tensor) -> torch.Tensor:
    """Sample-weighted mean of client parameter vectors (FedAvg, McMahan et al. 2017).

    Args:
        params: ``[C, P]`` client parameters (or updates).
        num_examples: ``[C]`` training examples behind each row.

    Returns:
        ``[P]``: ``sum_c n_c * params_c / sum_c n_c``.
    """
    weights = num_examples.to(params.dtype)
    return (weights @ params) / weights.sum()


def adam_server_update(
    x: torch.Tensor, delta: torch.Tensor, m: torch.Tensor, v: torch.Tensor, cfg: StrategyConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FedAdam: ``v <- beta2 v + (1 - beta2) delta^2``. Returns the new ``(x, m, v)``."""
    m = cfg.beta_1 * m + (1.0 - cfg.beta_1) * delta
    v = cfg.beta_2 * v + (1.0 - cfg.beta_2) * delta * delta
    return x + cfg.server_lr * m / (v.sqrt() + cfg.tau), m, v


def yogi_server_update(
    x: torch.Tensor, delta: torch.Tensor, m: torch.Tensor, v: torch.Tensor, cfg: StrategyConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FedYogi: ``v <- v - (1 - beta2) delta^2 sign(v - delta^2)``. Returns the new ``(x, m, v)``."""
    m = cfg.beta_1 * m + (1.0 - cfg.beta_1) * delta
    d2 = delta * delta
    v = v - (1.0 - cfg.beta_2) * d2 * torch.sign(v - d2)
    return x + cfg.server_lr * m / (v.sqrt() + cfg.tau), m, v


def adagrad_server_update(
    x: torch.Tensor, delta: torch.Tensor, m: torch.Tensor, v: torch.Tensor, cfg: StrategyConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FedAdagrad: ``v <- v + delta^2`` (with ``m`` kept, as in Reddi et al. with beta1). Returns ``(x, m, v)``."""
    m = cfg.beta_1 * m + (1.0 - cfg.beta_1) * delta
    v = v + delta * delta
    return x + cfg.server_lr * m / (v.sqrt() + cfg.tau), m, v


@dataclass(frozen=True)
class FitConfig:
    """What the server sends with the global model to every selected client (Flower's ``FitIns.config``)."""

    lr: float
    local_steps: int
    proximal_mu: float = 0.0


class Strategy(ABC):
    """A server strategy: configures client training and aggregates the results.

    Args:
        config: Strategy hyperparameters.
    """

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    def configure_fit(self, lr: float, local_steps: int) -> FitConfig:
        """Return the training instructions sent to the selected clients."""
        return FitConfig(lr=lr, local_steps=local_steps)

    @abstractmethod
    def aggregate_fit(
        self, global_params: torch.Tensor, client_params: torch.Tensor, num_examples: torch.Tensor
    ) -> torch.Tensor:
        """Return the new global parameters ``[P]`` from ``[C, P]`` client results (``C >= 1``)."""

    def state_dict(self) -> dict[str, Any]:
        """Server-side optimizer state (empty for stateless strategies)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - stateless by default
        """Restore :meth:`state_dict`."""


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    """Federated averaging: the new model is the sample-weighted mean of the client models."""

    def aggregate_fit(
        self, global_params: torch.Tensor, client_params: torch.Tensor, num_examples: torch.Tensor
    ) -> torch.Tensor:
        """Sample-weighted mean of client models."""
        return weighted_average(client_params, num_examples)


@STRATEGIES.register("fedprox")
class FedProx(FedAvg):
    """FedProx (Li et al., 2020): FedAvg aggregation; clients add ``mu/2 ||w - w_global||^2`` to their loss."""

    def configure_fit(self, lr: float, local_steps: int) -> FitConfig:
        """Send the proximal coefficient with the training instructions."""
        return FitConfig(lr=lr, local_steps=local_steps, proximal_mu=self.config.proximal_mu)


class AdaptiveServerStrategy(Strategy):
    """Base of FedAdam / FedYogi / FedAdagrad: a server optimizer applied to the mean client update."""

    def __init__(self, config: StrategyConfig) -> None:
        super().__init__(config)
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @staticmethod
    @abstractmethod
    def update(
        x: torch.Tensor, delta: torch.Tensor, m: torch.Tensor, v: torch.Tensor, cfg: StrategyConfig
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The server optimizer's pure update rule."""

    def aggregate_fit(
        self, global_params: torch.Tensor, client_params: torch.Tensor, num_examples: torch.Tensor
    ) -> torch.Tensor:
        """Apply the server optimizer to the sample-weighted mean update."""
        delta = weighted_average(client_params, num_examples) - global_params
        if self.m is None or self.v is None:
            self.m = torch.zeros_like(global_params)
            self.v = torch.full_like(global_params, self.config.tau**2)
        new_params, self.m, self.v = self.update(global_params, delta, self.m, self.v, self.config)
        return new_params

    def state_dict(self) -> dict[str, Any]:
        """The server moments."""
        return {
            "m": None if self.m is None else self.m.clone(),
            "v": None if self.v is None else self.v.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the server moments."""
        self.m = None if state["m"] is None else state["m"].clone()
        self.v = None if state["v"] is None else state["v"].clone()


@STRATEGIES.register("fedadam")
class FedAdam(AdaptiveServerStrategy):
    """FedAdam (Reddi et al., 2021)."""

    update = staticmethod(adam_server_update)


@STRATEGIES.register("fedyogi")
class FedYogi(AdaptiveServerStrategy):
    """FedYogi (Reddi et al., 2021)."""

    update = staticmethod(yogi_server_update)


@STRATEGIES.register("fedadagrad")
class FedAdagrad(AdaptiveServerStrategy):
    """FedAdagrad (Reddi et al., 2021)."""

    update = staticmethod(adagrad_server_update)
