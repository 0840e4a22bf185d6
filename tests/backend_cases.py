"""Shared cases of the backend tests: backend pairs, random circuits and their value-and-gradient."""

from __future__ import annotations

import numpy as np
import torch

from qflgym.qfl_core.backends import Backend, ClientNoise, PennyLaneBackend, TorchBackend, make_backend
from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.config import BackendConfig


def backends(spec: CircuitSpec, **pennylane: object) -> tuple[TorchBackend, PennyLaneBackend]:
    torch_backend = make_backend(spec, BackendConfig(name="torch"))
    pl_backend = make_backend(spec, BackendConfig(name="pennylane", **pennylane))
    assert isinstance(torch_backend, TorchBackend) and isinstance(pl_backend, PennyLaneBackend)
    return torch_backend, pl_backend


def draw(spec: CircuitSpec, clients: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    weights = torch.tensor(rng.uniform(0, 2 * np.pi, (clients, *spec.weight_shape)), requires_grad=True)
    x = torch.tensor(rng.uniform(0, np.pi, (clients, batch, spec.n_qubits)))
    return weights, x


def value_and_grad(
    backend: Backend, weights: torch.Tensor, x: torch.Tensor, noise: ClientNoise, cotangent: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    z = backend.expvals(weights, x, noise, torch.Generator().manual_seed(seed))
    (grad,) = torch.autograd.grad((z * cotangent).sum(), weights)
    return z.detach(), grad
