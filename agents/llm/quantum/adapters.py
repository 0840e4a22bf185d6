"""The quantum adapters as entries of :data:`~qflgym.agents.llm.adapters.ADAPTERS`: ``qpa`` and ``qaa``.

Both follow the :class:`~qflgym.agents.llm.adapters.Adapter` protocol, so ``qflgym llm sft|grpo|eval`` and
:func:`~qflgym.agents.llm.adapters.attach_adapter` use them by name. Their options are the config's ``extra``
(:class:`~.options.QPAOptions`, :class:`~.options.QAAOptions`). A saved adapter is a directory with
``qflgym_quantum.json`` (adapter, rank, targets, options) and ``adapter.safetensors`` (the trainable tensors and
QPA's start offsets). Importing this module is cheap: torch is imported when an adapter is used.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qflgym.agents.llm.adapter_config import AdapterConfig

__all__ = ["QAAAdapter", "QPAAdapter", "QuantumAdapter"]

#: Targets when neither the config nor the model spec names any (the attention projections, as for LoRA).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class QuantumAdapter(ABC):
    """What ``qpa`` and ``qaa`` share: availability, option parsing, save and load."""

    name = ""

    def available(self) -> tuple[bool, str]:
        """The circuits run on the torch kernel; torch is all they need."""
        ok = importlib.util.find_spec("torch") is not None
        return ok, "" if ok else "the 'torch' package is not installed"

    def base_model_kwargs(self) -> dict[str, Any]:
        """No extra kwargs: the base model stays in its dtype."""
        return {}

    @abstractmethod
    def options(self, extra: dict[str, Any]) -> Any:
        """The adapter's options parsed from ``extra``."""

    @abstractmethod
    def layer_class(self) -> type:
        """The module class that wraps each target."""

    @abstractmethod
    def _attach(self, model: Any, targets: list[str], config: AdapterConfig, options: Any) -> Any:
        """Wrap every target of ``model`` in :meth:`layer_class` layers; return the model."""

    @abstractmethod
    def _state(self, model: Any) -> dict[str, Any]:
        """The adapter's tensors by name (what :meth:`save` writes and :meth:`load` expects)."""

    def attach(self, model: Any, config: AdapterConfig, target_modules: tuple[str, ...] = ()) -> Any:
        """Freeze ``model`` and add fresh adapter layers on the targets (in place; returns ``model``)."""
        targets = list(config.target_modules or target_modules or DEFAULT_TARGETS)
        options = self.options(config.extra)
        model = self._attach(model, targets, config, options)
        model._qflgym_quantum = {  # what save() records next to the tensors
            "adapter": self.name,
            "r": config.r,
            "alpha": config.alpha,
            "dropout": config.dropout,
            "options": options.to_dict(),
        }
        return model

    def save(self, model: Any, path: str | Path) -> None:
        """Write ``qflgym_quantum.json`` and ``adapter.safetensors`` into ``path``."""
        from qflgym.agents.llm.quantum.targets import save_state

        layer = self.layer_class()
        targets = [m.target for m in model.modules() if isinstance(m, layer)]
        save_state(path, model._qflgym_quantum | {"targets": targets}, self._state(model))

    def load(self, model: Any, path: str | Path, trainable: bool = False) -> Any:
        """Attach the adapter saved at ``path`` to the base ``model`` and load its tensors.

        Raises:
            FileNotFoundError: ``path`` holds no saved quantum adapter.
            ValueError: It was saved by another adapter, or its tensors do not fit the model.
        """
        from qflgym.agents.llm.adapter_config import AdapterConfig
        from qflgym.agents.llm.quantum.targets import load_state, read_meta

        meta = read_meta(path)
        if meta["adapter"] != self.name:
            raise ValueError(f"{path} holds a {meta['adapter']!r} adapter, not {self.name!r}")
        config = AdapterConfig(
            name=self.name,
            r=meta["r"],
            alpha=meta["alpha"],
            dropout=meta["dropout"],
            target_modules=meta["targets"],
            extra=meta["options"],
        )
        model = self.attach(model, config)
        state = load_state(path)
        expected = set(self._state(model))
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.load_state_dict(state, strict=False)
        if not trainable:  # attach froze the base model: the adapter's parameters are the ones left trainable
            for p in model.parameters():
                p.requires_grad_(False)
            model.eval()
        return model


class QPAAdapter(QuantumAdapter):
    """QPA: LoRA factors generated by a QNN and a mapping MLP (:mod:`.qpa`); merges like LoRA."""

    name = "qpa"

    def options(self, extra: dict[str, Any]) -> Any:
        """:class:`~.options.QPAOptions` from ``extra``."""
        from qflgym.agents.llm.quantum.options import QPAOptions

        return QPAOptions.from_dict(extra)

    def layer_class(self) -> type:
        """:class:`~.qpa.QPALinear`."""
        from qflgym.agents.llm.quantum.qpa import QPALinear

        return QPALinear

    def _attach(self, model: Any, targets: list[str], config: AdapterConfig, options: Any) -> Any:
        from qflgym.agents.llm.quantum.qpa import attach_qpa

        return attach_qpa(model, targets, r=config.r, alpha=config.alpha, dropout=config.dropout, options=options)

    def _state(self, model: Any) -> dict[str, Any]:
        from qflgym.agents.llm.quantum.qpa import qpa_state

        return qpa_state(model)

    def merge(self, model: Any) -> Any:
        """Materialize ``A`` and ``B`` once and fold ``(alpha / r)·B·A`` into the base weights."""
        from qflgym.agents.llm.quantum.qpa import merge_qpa

        return merge_qpa(model)


class QAAAdapter(QuantumAdapter):
    """QAA: amplitude-embedded PQCs on the targets' inputs, added to their outputs (:mod:`.qaa`)."""

    name = "qaa"

    def options(self, extra: dict[str, Any]) -> Any:
        """:class:`~.options.QAAOptions` from ``extra``."""
        from qflgym.agents.llm.quantum.options import QAAOptions

        return QAAOptions.from_dict(extra)

    def layer_class(self) -> type:
        """:class:`~.qaa.QAALinear`."""
        from qflgym.agents.llm.quantum.qaa import QAALinear

        return QAALinear

    def _attach(self, model: Any, targets: list[str], config: AdapterConfig, options: Any) -> Any:
        from qflgym.agents.llm.quantum.qaa import attach_qaa

        return attach_qaa(model, targets, options=options)

    def _state(self, model: Any) -> dict[str, Any]:
        from qflgym.agents.llm.quantum.qaa import qaa_state

        return qaa_state(model)

    def merge(self, model: Any) -> Any:
        """Returned as it is: the update is non-linear in the input, so it cannot be folded into the weights."""
        return model
