"""The hyperparameters every adapter of :data:`~qflgym.agents.llm.adapters.ADAPTERS` is attached with.

A leaf module, so the adapter implementations (LoRA in :mod:`qflgym.agents.llm.adapters`, the quantum ones in
:mod:`qflgym.agents.llm.quantum`) import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AdapterConfig"]


@dataclass
class AdapterConfig:
    """Hyperparameters shared by the LoRA-family adapters.

    Attributes:
        name: Adapter name in :data:`~qflgym.agents.llm.adapters.ADAPTERS` (``lora``, ``qlora``, ``auto``,
            ``qpa``, ``qaa``).
        r: LoRA rank.
        alpha: LoRA scaling numerator (``lora_alpha``).
        dropout: LoRA dropout.
        target_modules: Modules to adapt (``None``: the model's default, the attention projections).
        extra: Adapter-specific options (``qpa``: :class:`~qflgym.agents.llm.quantum.options.QPAOptions`,
            ``qaa``: :class:`~qflgym.agents.llm.quantum.options.QAAOptions`; passed through to third-party adapters).
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
