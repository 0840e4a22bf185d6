"""QAA, Quantum-Amplitude-embedded Adaptation (Roh & Kim, CIKM 2025; surveyed in arXiv 2509.16244).

**From the sources:** a ``d``-dimensional activation fits in ``ceil(log2 d)`` qubits by amplitude embedding; a PQC
transforms it non-linearly; compact quantum modules take the place of linear adapters in the attention modules,
and their output is merged with the frozen representation (hidden states are adapted, not weights).

**Ours, where the sources are silent** (no circuit, read-out, target list or code was published):

1. the input ``x`` of a target ``nn.Linear`` (``in → out``) is zero-padded to ``2**n``, ``n = ceil(log2 in)``, and
   normalized (an all-zero input stays zero);
2. it is amplitude-embedded and ``depth`` layers of RY and RZ on every wire and a CNOT entangler (ring by
   default) follow (:class:`~.circuits.EmbeddingCircuit`);
3. the read-out is ``⟨Z_k⟩`` (``n`` values, default) or the ``2**n`` basis probabilities;
4. a trainable linear projection (no bias, zero-initialized, so training starts from the base model) maps it to
   ``out`` values;
5. the layer returns ``W₀x + scale·projection(readout)``.

The angles start uniform in ``[-π, π)`` from ``seed``. The update is a non-linear function of ``x``, so it cannot be
folded into ``W₀``: merging returns the model unchanged, and inference keeps the circuits (torch statevector).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qflgym.agents.llm.quantum.circuits import EmbeddingCircuit
from qflgym.agents.llm.quantum.options import QAAOptions
from qflgym.agents.llm.quantum.targets import find_targets, replace_module

__all__ = ["QAALinear", "attach_qaa", "qaa_state"]


class QAALinear(nn.Module):
    """A frozen ``nn.Linear`` plus ``scale·P·readout(PQC(amplitudes(x)))``.

    Args:
        base: The frozen layer.
        name: Its name in the model.
        options: The QAA options.
    """

    def __init__(self, base: nn.Linear, name: str, options: QAAOptions) -> None:
        super().__init__()
        self.base = base
        self.target = name
        self.scale = float(options.scale)
        self.circuit = EmbeddingCircuit(
            options.n_qubits(base.in_features, repr(name)), options.depth, options.entangler, options.readout
        )
        device = base.weight.device
        self.angles = nn.Parameter(torch.empty(self.circuit.shape, device=device).uniform_(-math.pi, math.pi))
        self.projection = nn.Linear(self.circuit.n_outputs, base.out_features, bias=False, device=device)
        nn.init.zeros_(self.projection.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scale·projection(circuit(x))`` over the last dimension of ``x`` (circuit in float32)."""
        out = self.base(x)
        readout = self.circuit(x.reshape(-1, x.shape[-1]).float(), self.angles.float())
        update = nn.functional.linear(readout, self.projection.weight.float()).reshape(*x.shape[:-1], -1)
        return out + (self.scale * update).to(out.dtype)


def attach_qaa(model: nn.Module, targets: list[str], *, options: QAAOptions) -> nn.Module:
    """Freeze ``model`` and wrap each target ``nn.Linear`` in a :class:`QAALinear` (in place; returns ``model``).

    Raises:
        ConfigError: Unknown or non-Linear targets, or inputs wider than ``2**options.max_qubits``.
    """
    found = find_targets(model, targets, "qaa")
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        layers = [(name, QAALinear(module, name, options)) for name, module in found]
    for name, layer in layers:
        replace_module(model, name, layer)
    return model


def qaa_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a QAA model saves: every layer's angles and projection."""
    state = {}
    for _, layer in model.named_modules():
        if isinstance(layer, QAALinear):
            state[f"{layer.target}.angles"] = layer.angles
            state[f"{layer.target}.projection.weight"] = layer.projection.weight
    return state
