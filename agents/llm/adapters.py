"""Parameter-efficient adapters of the LLM policy, chosen by name from one registry: :data:`ADAPTERS`.

Built in:

* ``lora`` — PEFT ``LoraConfig`` on the attention projections (or the modules given).
* ``qlora`` — LoRA on a 4-bit (NF4) base model; needs a CUDA device and ``bitsandbytes``. It is never chosen
  silently on a machine without them: asking for it raises :class:`AdapterUnavailable` with the reason.
* ``auto`` — resolves to ``qlora`` where it can run and to ``lora`` otherwise (printing which and why).

An adapter is an object with ``name``, ``available() -> (bool, reason)``, ``base_model_kwargs()`` (extra
``from_pretrained`` kwargs for the base model, e.g. a quantization config), ``attach(model, config, spec)``,
``save(model, path)``, ``load(model, path)`` and ``merge(model)`` (fold the adapter into the base weights for
inference where that is exact enough; otherwise return the model as it is). Quantum adapters (QPA, QAA) plug in
by registering such an object — ``ADAPTERS.add("qpa", QPAAdapter())`` or the entry-point group
``qflgym.llm_adapters`` — and every trainer, the policy loader and the CLI pick them up by name.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from qflgym.config import ConfigError
from qflgym.registry import Registry

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterConfig",
    "AdapterUnavailable",
    "LoRAAdapter",
    "QLoRAAdapter",
    "resolve_adapter",
]


class AdapterUnavailable(ConfigError):
    """The requested adapter cannot run on this machine (the message says why and what to use instead)."""


@dataclass
class AdapterConfig:
    """Hyperparameters shared by the LoRA-family adapters.

    Attributes:
        name: Adapter name in :data:`ADAPTERS` (``lora``, ``qlora``, ``auto``).
        r: LoRA rank.
        alpha: LoRA scaling numerator (``lora_alpha``).
        dropout: LoRA dropout.
        target_modules: Modules to adapt (``None``: the model's default, the attention projections).
        extra: Adapter-specific options (passed through to third-party adapters).
    """

    name: str = "lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"adapter r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter dropout must be in [0, 1), got {self.dropout}")


@runtime_checkable
class Adapter(Protocol):
    """What an adapter implements (see the module docstring)."""

    name: str

    def available(self) -> tuple[bool, str]:
        """Whether the adapter can run here, and why not."""
        ...

    def base_model_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` kwargs for the base model."""
        ...

    def attach(self, model: Any, config: AdapterConfig, target_modules: tuple[str, ...] = ()) -> Any:
        """Return ``model`` with fresh trainable adapter weights."""
        ...

    def save(self, model: Any, path: str | Path) -> None:
        """Save the adapter weights (not the base model) to ``path``."""
        ...

    def load(self, model: Any, path: str | Path, trainable: bool = False) -> Any:
        """Return the base ``model`` with the adapter saved at ``path``."""
        ...

    def merge(self, model: Any) -> Any:
        """Return an inference model with the adapter folded into the base weights (or ``model`` if it can't be)."""
        ...


ADAPTERS: Registry[Adapter] = Registry("LLM adapter", entry_point_group="qflgym.llm_adapters")


class LoRAAdapter:
    """LoRA through PEFT."""

    name = "lora"

    def available(self) -> tuple[bool, str]:
        """LoRA runs everywhere PEFT is installed."""
        ok = importlib.util.find_spec("peft") is not None
        return ok, "" if ok else "the 'peft' package is not installed (pip install 'qflgym[llm]')"

    def base_model_kwargs(self) -> dict[str, Any]:
        """No extra kwargs: the base model stays in its dtype."""
        return {}

    def peft_config(self, config: AdapterConfig, target_modules: tuple[str, ...] = ()) -> Any:
        """The PEFT ``LoraConfig`` for ``config``."""
        from peft import LoraConfig, TaskType

        targets = list(config.target_modules or target_modules or ("q_proj", "k_proj", "v_proj", "o_proj"))
        return LoraConfig(
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=targets,
            bias="none",
            task_type=TaskType.CAUSAL_LM,
        )

    def attach(self, model: Any, config: AdapterConfig, target_modules: tuple[str, ...] = ()) -> Any:
        """Wrap ``model`` in a ``PeftModel`` with fresh LoRA weights."""
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(config, target_modules))

    def save(self, model: Any, path: str | Path) -> None:
        """``PeftModel.save_pretrained`` (adapter weights and ``adapter_config.json`` only)."""
        model.save_pretrained(str(path))

    def load(self, model: Any, path: str | Path, trainable: bool = False) -> Any:
        """``PeftModel.from_pretrained(model, path)``."""
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
        if not trainable:
            loaded.eval()
        return loaded

    def merge(self, model: Any) -> Any:
        """``merge_and_unload``: ``W + (alpha / r) B A`` in the base weights, a plain model without LoRA layers."""
        return model.merge_and_unload()


class QLoRAAdapter(LoRAAdapter):
    """LoRA on a 4-bit NF4 base model (CUDA + ``bitsandbytes`` only)."""

    name = "qlora"

    def available(self) -> tuple[bool, str]:
        """Needs a CUDA device and the ``bitsandbytes`` package."""
        import torch

        if not torch.cuda.is_available():
            return False, "QLoRA needs a CUDA device (4-bit bitsandbytes kernels); none is visible"
        if importlib.util.find_spec("bitsandbytes") is None:
            return False, "QLoRA needs the 'bitsandbytes' package, which is not installed"
        return True, ""

    def _check(self) -> None:
        ok, why = self.available()
        if not ok:
            raise AdapterUnavailable(f"adapter 'qlora' is unavailable: {why}. Use adapter 'lora' (or 'auto').")

    def base_model_kwargs(self) -> dict[str, Any]:
        """A 4-bit NF4 ``BitsAndBytesConfig`` (bf16 compute)."""
        self._check()
        import torch
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            ),
            "device_map": {"": 0},
        }

    def attach(self, model: Any, config: AdapterConfig, target_modules: tuple[str, ...] = ()) -> Any:
        """Prepare the 4-bit model for k-bit training and add LoRA."""
        self._check()
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
        return super().attach(model, config, target_modules)

    def load(self, model: Any, path: str | Path, trainable: bool = False) -> Any:
        """Load the adapter onto a 4-bit base model."""
        self._check()
        return super().load(model, path, trainable)

    def merge(self, model: Any) -> Any:
        """Kept unmerged: folding LoRA into NF4 weights would requantize them."""
        return model


ADAPTERS.add("lora", LoRAAdapter())
ADAPTERS.add("qlora", QLoRAAdapter())


def resolve_adapter(name: str, *, verbose: bool = True) -> Adapter:
    """Return the adapter called ``name``; ``auto`` picks ``qlora`` where it runs, else ``lora``.

    Raises:
        KeyError: Unknown name (the message lists the registered adapters).
        AdapterUnavailable: The adapter cannot run here (e.g. ``qlora`` without CUDA + bitsandbytes).
    """
    if name == "auto":
        ok, why = ADAPTERS.get("qlora").available()
        chosen = "qlora" if ok else "lora"
        if verbose:
            reason = "CUDA and bitsandbytes found" if ok else why
            print(f"[qflgym llm] adapter 'auto' -> '{chosen}' ({reason})", file=sys.stderr)
        return ADAPTERS.get(chosen)
    adapter = ADAPTERS.get(name)
    ok, why = adapter.available()
    if not ok:
        raise AdapterUnavailable(f"adapter {name!r} is unavailable: {why}")
    return adapter


def write_adapter_meta(path: str | Path, config: AdapterConfig, adapter_name: str) -> None:
    """Record which adapter (after ``auto`` resolution) and hyperparameters produced ``path``."""
    meta = asdict(config) | {"resolved": adapter_name}
    Path(path, "qflgym_adapter.json").write_text(json.dumps(meta, indent=2))
