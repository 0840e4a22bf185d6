"""Heads as torch modules: classical baselines of comparable size and the VQC as a differentiable layer.

:data:`HEADS` maps a name to ``factory(n_features, n_classes, config, rng) -> torch.nn.Module``, a module that
maps features ``[B, F]`` to logits ``[B, K]``:

* ``logreg`` — logistic regression ``x W + b``: ``F K + K`` parameters.
* ``mlp`` — ``tanh(x W1 + b1) W2 + b2`` with ``H`` hidden units: ``F H + H + H K + K`` parameters. ``H`` is
  ``model.hidden`` or, by default, the smallest width whose count reaches that of the configured circuit
  (:func:`matched_hidden`), so the two are compared at (about) equal size.
* ``vqc`` — the configured circuit (:class:`~qflgym.qfl_core.circuits.CircuitSpec`) on the PennyLane backend,
  differentiable in its inputs too (the adapter kind trains the encoder through it).

Initialization draws from the federation's structural generator ``rng`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from qflgym.registry import Registry

from .backends import make_backend
from .backends.base import ClientNoise
from .circuits import CircuitSpec
from .config import BackendConfig, FederationConfig

__all__ = ["HEADS", "QuantumHead", "matched_hidden"]

HeadFactory = Callable[[int, int, FederationConfig, np.random.Generator], nn.Module]

HEADS: Registry[HeadFactory] = Registry("head", entry_point_group="qflgym.heads")


def _linear(n_in: int, n_out: int, rng: np.random.Generator) -> nn.Linear:
    """A float64 ``nn.Linear`` with LeCun-normal weights and zero bias drawn from ``rng``."""
    layer = nn.Linear(n_in, n_out, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(rng.normal(0.0, 1.0 / math.sqrt(n_in), size=(n_out, n_in))))
        layer.bias.zero_()
    return layer


def circuit_param_count(config: FederationConfig, n_classes: int) -> int:
    """Parameters of the configured circuit (weights and readout) for ``n_classes`` classes."""
    return CircuitSpec.from_config(config.circuit, n_classes).n_params


def matched_hidden(n_features: int, n_classes: int, target: int) -> int:
    """The smallest MLP width ``H >= 1`` with ``F H + H + H K + K >= target`` parameters."""
    return max(1, math.ceil((target - n_classes) / (n_features + 1 + n_classes)))


@HEADS.register("logreg")
def logistic_regression(
    n_features: int, n_classes: int, config: FederationConfig, rng: np.random.Generator
) -> nn.Module:
    """Logistic regression on the features (``F K + K`` parameters)."""
    del config
    return _linear(n_features, n_classes, rng)


@HEADS.register("mlp")
def small_mlp(n_features: int, n_classes: int, config: FederationConfig, rng: np.random.Generator) -> nn.Module:
    """One tanh hidden layer, as wide as ``model.hidden`` or matched to the circuit's parameter count."""
    hidden = config.model.hidden or matched_hidden(n_features, n_classes, circuit_param_count(config, n_classes))
    return nn.Sequential(_linear(n_features, hidden, rng), nn.Tanh(), _linear(hidden, n_classes, rng))


class QuantumHead(nn.Module):
    """The configured circuit as a layer: features ``[B, F]`` -> logits ``[B, K]``, differentiable in both.

    Args:
        spec: The circuit.
        rng: Draws the initial parameters (:meth:`CircuitSpec.init_params`).
        device: PennyLane device name (noiseless, exact expectations).
    """

    def __init__(self, spec: CircuitSpec, rng: np.random.Generator, device: str = "default.qubit") -> None:
        super().__init__()
        self.spec = spec
        self.theta = nn.Parameter(spec.init_params(rng, torch.float64))
        self.backend = make_backend(spec, BackendConfig(name="pennylane", device=device))
        self._generator = torch.Generator().manual_seed(0)  # exact expectations draw nothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` (angles or unit-norm amplitudes, as the spec embeds them)."""
        weights, readout = self.spec.split(self.theta)
        z = self.backend.expvals(weights.unsqueeze(0), x.unsqueeze(0), ClientNoise.exact(1), self._generator)
        return self.spec.logits(z, readout.unsqueeze(0))[0]


@HEADS.register("vqc")
def quantum_head(n_features: int, n_classes: int, config: FederationConfig, rng: np.random.Generator) -> nn.Module:
    """The configured circuit (``circuit.*``) as a head."""
    spec = CircuitSpec.from_config(config.circuit, n_classes)
    if spec.n_features != n_features:
        raise ValueError(f"the vqc head takes {spec.n_features} features, got {n_features}")
    return QuantumHead(spec, rng)
