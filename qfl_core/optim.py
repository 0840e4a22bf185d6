"""Local optimizers vectorized over a leading client dimension.

Every client in a round trains its own copy of the parameters; the copies are stacked into one ``[C, P]``
tensor so that a single autograd call serves all clients. Optimizers here update that stack in place of
``torch.optim`` (which would treat the stack as one parameter). Each round starts a fresh optimizer state, as
federated clients do when they receive a new global model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from qflgym.registry import Registry


class LocalOptimizer(ABC):
    """Update rule for a ``[C, P]`` stack of client parameters.

    Args:
        params: The stack the optimizer will update (used for state shapes).
        lr: Learning rate.
    """

    def __init__(self, params: torch.Tensor, lr: float) -> None:
        self.lr = lr

    @abstractmethod
    def step(self, params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Return the updated stack given the gradient of each client's loss w.r.t. its own parameters."""


OPTIMIZERS: Registry[type[LocalOptimizer]] = Registry("local optimizer")


@OPTIMIZERS.register("sgd")
class SGD(LocalOptimizer):
    """Plain stochastic gradient descent: ``p <- p - lr * g``."""

    def step(self, params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Apply one SGD step."""
        return params - self.lr * grad


@OPTIMIZERS.register("adam")
class Adam(LocalOptimizer):
    """Adam (Kingma & Ba, 2015) with bias correction, per client.

    Args:
        params: The stack the optimizer will update.
        lr: Learning rate.
        betas: Moment decay rates.
        eps: Denominator epsilon.
    """

    def __init__(
        self, params: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.m = torch.zeros_like(params)
        self.v = torch.zeros_like(params)
        self.t = 0

    def step(self, params: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Apply one Adam step."""
        self.t += 1
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1.0 - self.beta2) * grad * grad
        m_hat = self.m / (1.0 - self.beta1**self.t)
        v_hat = self.v / (1.0 - self.beta2**self.t)
        return params - self.lr * m_hat / (v_hat.sqrt() + self.eps)
