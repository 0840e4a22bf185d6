"""QPA, Quantum Parameter Adaptation (Liu, Yang, Goan, Hsieh, ICLR 2025, arXiv 2410.09846): generated LoRA factors.

For a target ``nn.Linear`` (``in → out``) and rank ``r`` LoRA has ``m = out·r + r·in`` parameters. QPA generates
them instead of storing them:

1. A QNN of ``N = ceil(log2(ceil(m / chunk)))`` qubits (:class:`~.circuits.GeneratorCircuit`: ``depth`` layers of
   RY + an open CNOT chain, from ``|0…0⟩``) gives the probabilities ``p_i`` of the ``2**N`` basis states.
2. They are post-processed as in the public code: ``p̃ = (β·tanh(γ·2**(N-1)·p))**α − mean(p̃)`` with
   ``β, γ, α = 0.6, 0.1, 0.15``.
3. Basis state ``i`` (for ``i < ceil(m / chunk)``, in index order: the fixed, deterministic order the public code
   lacks — it draws the bitstrings at random on every call) gives the mapping input ``[bits of i as ±1 ; p̃_i]``.
4. A mapping MLP (shared by all chunks) turns each input into ``chunk`` parameters; the chunks are concatenated,
   truncated to ``m``, centred (minus their mean) and split into ``B`` (``out × r``, first) and ``A`` (``r × in``).
5. The layer computes ``W₀x + (alpha / r)·B·A·dropout(x)``, PEFT's LoRA forward and names.

Trainable: the QNN angles and the MLP. With ``shared`` (the default) one generator produces the factors of all
targets at once (concatenated in model order); otherwise each target has its own. Ours, where the paper's code is
silent or unusable: the fixed basis order; ``zero_start`` (the initial ``B`` is subtracted as a fixed buffer, so
training starts from the base model as LoRA does); the ``activation`` option (the public code's MLP has none, so
the generator is affine); a clamp keeping ``x**α`` differentiable at 0. After training, :func:`materialize_qpa`
computes ``A`` and ``B`` once, and the model is plain LoRA; :func:`merge_qpa` folds it into the base weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from qflgym.agents.llm.quantum.circuits import GeneratorCircuit
from qflgym.agents.llm.quantum.kernel import basis_bits
from qflgym.agents.llm.quantum.options import QPAOptions
from qflgym.agents.llm.quantum.targets import find_targets, replace_module

__all__ = [
    "BANK_NAME",
    "LoRALinear",
    "QPABank",
    "QPAGenerator",
    "QPALinear",
    "attach_qpa",
    "materialize_qpa",
    "merge_qpa",
    "qpa_state",
]

#: Attribute under which the generators live on the adapted model.
BANK_NAME = "qflgym_qpa"
#: Post-processing constants of the public code.
BETA, GAMMA, ALPHA = 0.6, 0.1, 0.15

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _mapping_mlp(n_in: int, widths: tuple[int, ...], n_out: int, activation: str) -> nn.Sequential:
    sizes = (n_in, *widths, n_out)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if activation != "none" and i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class QPAGenerator(nn.Module):
    """QNN + mapping MLP producing ``size`` parameters (see the module docstring, steps 1–4).

    Args:
        size: Parameters to generate.
        options: The QPA options.
        where: What it generates for (used in error messages).
    """

    def __init__(self, size: int, options: QPAOptions, where: str) -> None:
        super().__init__()
        self.size = size
        self.n_chunks = math.ceil(size / options.chunk)
        self.circuit = GeneratorCircuit(options.n_qubits(size, where), options.depth)
        n = self.circuit.n_qubits
        self.angles = nn.Parameter(torch.empty(self.circuit.shape).uniform_(-math.pi, math.pi))
        self.mapping = _mapping_mlp(n + 1, options.widths, options.chunk, options.activation)
        self.register_buffer("bits", (2 * basis_bits(n)[: self.n_chunks] - 1).float(), persistent=False)

    def features(self) -> torch.Tensor:
        """The mapping inputs ``(n_chunks, N + 1)``: bitstring (±1) and post-processed probability."""
        n = self.circuit.n_qubits
        probs = self.circuit(self.angles)
        squashed = (BETA * torch.tanh(GAMMA * 2 ** (n - 1) * probs)).clamp_min(torch.finfo(probs.dtype).tiny)
        processed = squashed**ALPHA
        processed = processed - processed.mean()
        return torch.cat([self.bits, processed[: self.n_chunks, None]], dim=1)

    def forward(self) -> torch.Tensor:
        """The generated parameters, centred: ``(size,)``."""
        flat = self.mapping(self.features()).reshape(-1)[: self.size]
        return flat - flat.mean()


class QPABank(nn.Module):
    """The generators of every target and the layout of their outputs; caches one generation per step.

    Args:
        shapes: ``(name, out_features, in_features)`` of each target, in model order.
        r: LoRA rank.
        options: The QPA options.
    """

    def __init__(self, shapes: list[tuple[str, int, int]], r: int, options: QPAOptions) -> None:
        super().__init__()
        sizes = [out * r + r * inp for _, out, inp in shapes]
        groups = [list(range(len(shapes)))] if options.shared else [[i] for i in range(len(shapes))]
        self.layout: dict[str, tuple[int, int, int, int]] = {}
        generators = []
        for g, group in enumerate(groups):
            offset = 0
            for i in group:
                name, out, inp = shapes[i]
                self.layout[name] = (g, offset, out, inp)
                offset += sizes[i]
            where = "the shared generator" if options.shared else repr(shapes[group[0]][0])
            generators.append(QPAGenerator(offset, options, where))
        self.generators = nn.ModuleList(generators)
        self.r = r
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._cache_key: tuple[Any, ...] = ()

    def generate(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Run every generator and cut the factors ``(B, A)`` of each target out of their outputs."""
        flats = [generator() for generator in self.generators]
        for flat in flats:
            if flat.requires_grad:
                flat.register_hook(self._invalidate)
        factors = {}
        for name, (g, offset, out, inp) in self.layout.items():
            flat = flats[g]
            b = flat[offset : offset + out * self.r].view(out, self.r)
            a = flat[offset + out * self.r : offset + out * self.r + self.r * inp].view(self.r, inp)
            factors[name] = (b, a)
        return factors

    def _invalidate(self, grad: torch.Tensor) -> None:
        self._cache = None

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A)`` of target ``name``, generated once per parameter update (and per backward pass)."""
        key = (
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
            tuple(p._version for p in self.parameters()),
        )
        if self._cache is None or key != self._cache_key:
            self._cache = self.generate()
            self._cache_key = key
        return self._cache[name]


class QPALinear(nn.Module):
    """A frozen ``nn.Linear`` plus the generated LoRA update ``(alpha / r)·B·A·dropout(x)``.

    Args:
        base: The frozen layer.
        name: Its name in the model (its key in the bank's layout).
        bank: The generators.
        scale: ``alpha / r``.
        dropout: Dropout on the update's input.
    """

    def __init__(self, base: nn.Linear, name: str, bank: QPABank, scale: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.target = name
        self.scale = scale
        self.dropout = nn.Dropout(dropout)
        self._bank = (bank,)  # a tuple keeps the shared bank out of this module's submodules
        self.register_buffer("b_start", torch.zeros(base.out_features, bank.r, device=base.weight.device))

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current LoRA factors ``(B, A)`` of this layer (``B`` minus the start offset)."""
        b, a = self._bank[0].factors(self.target)
        return b - self.b_start, a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scale·B·A·dropout(x)``."""
        b, a = self.lora_factors()
        out = self.base(x)
        update = nn.functional.linear(nn.functional.linear(self.dropout(x).to(a.dtype), a), b)
        return out + (self.scale * update).to(out.dtype)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus fixed LoRA factors: a materialized QPA layer (plain LoRA at inference).

    Args:
        base: The frozen layer.
        lora_b: ``(out, r)``.
        lora_a: ``(r, in)``.
        scale: ``alpha / r``.
    """

    def __init__(self, base: nn.Linear, lora_b: torch.Tensor, lora_a: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.base = base
        self.scale = scale
        self.register_buffer("lora_b", lora_b.detach().clone())
        self.register_buffer("lora_a", lora_a.detach().clone())

    def delta_weight(self) -> torch.Tensor:
        """``scale·B·A``, the update of the base weight (float32)."""
        return self.scale * (self.lora_b.float() @ self.lora_a.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scale·B·A·x``."""
        out = self.base(x)
        update = nn.functional.linear(nn.functional.linear(x.to(self.lora_a.dtype), self.lora_a), self.lora_b)
        return out + (self.scale * update).to(out.dtype)


def _qpa_layers(model: nn.Module, kind: type[nn.Module] = QPALinear) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]


def attach_qpa(
    model: nn.Module, targets: list[str], *, r: int, alpha: float, dropout: float, options: QPAOptions
) -> nn.Module:
    """Freeze ``model`` and give each target ``nn.Linear`` a generated LoRA update (in place; returns ``model``).

    Raises:
        ConfigError: Unknown or non-Linear targets, or a QNN larger than ``options.max_qubits``.
    """
    found = find_targets(model, targets, "qpa")
    for p in model.parameters():
        p.requires_grad_(False)
    device = found[0][1].weight.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        bank = QPABank([(n, m.out_features, m.in_features) for n, m in found], r, options).to(device)
    model.add_module(BANK_NAME, bank)
    for name, module in found:
        replace_module(model, name, QPALinear(module, name, bank, alpha / r, dropout))
    if options.zero_start:
        with torch.no_grad():
            for _, layer in _qpa_layers(model):
                layer.b_start.copy_(bank.factors(layer.target)[0])
    return model


def qpa_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a QPA model saves: the generators' parameters and the start offsets."""
    bank = getattr(model, BANK_NAME)
    state = {f"{BANK_NAME}.{k}": v for k, v in bank.state_dict().items()}
    state |= {f"{layer.target}.b_start": layer.b_start for _, layer in _qpa_layers(model)}
    return state


def materialize_qpa(model: nn.Module) -> nn.Module:
    """Replace every QPA layer by a :class:`LoRALinear` with its current factors and drop the generators."""
    with torch.no_grad():
        for name, layer in _qpa_layers(model):
            b, a = layer.lora_factors()
            replace_module(model, name, LoRALinear(layer.base, b, a, layer.scale))
    if hasattr(model, BANK_NAME):
        delattr(model, BANK_NAME)
    return model


def merge_qpa(model: nn.Module) -> nn.Module:
    """Fold the (materialized) factors into the base weights (in float32): a plain model without adapter layers."""
    materialize_qpa(model)
    with torch.no_grad():
        for name, layer in _qpa_layers(model, LoRALinear):
            weight = layer.base.weight
            weight.copy_((weight.float() + layer.delta_weight().to(weight.device)).to(weight.dtype))
            replace_module(model, name, layer.base)
    return model
