"""Sentence embeddings of a corpus, computed once and cached on disk.

The cache file is ``<cache>/embeddings/<corpus>-<encoder>-<key>.npz`` with ``key`` the first 16 hex digits of
``sha256(model_id, corpus hash)``: a changed corpus or model gives another file, so stale embeddings are never
read. Each file also stores the model id, the corpus hash and the sample count, and loading checks them: a file
that cannot be read or does not match raises :class:`EmbeddingCacheError` naming the path (it is never silently
recomputed or replaced). Files are written atomically (a temporary file, then a rename). Within a process the
arrays are kept in memory (read-only).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from qflgym.config import ConfigError
from qflgym.qfl_core.config import TextConfig

from .corpus import TextCorpus, cache_root
from .encoders import ENCODERS

__all__ = ["EmbeddingCacheError", "embed_corpus", "embedding_cache_path"]


class EmbeddingCacheError(ConfigError):
    """An embedding cache file is unreadable or does not match its key (the message names the path)."""


_MEMORY: dict[Path, np.ndarray] = {}


def embedding_cache_path(corpus: TextCorpus, text: TextConfig) -> Path:
    """The cache file of ``corpus`` embedded by ``data.text.encoder``."""
    model_id = ENCODERS.get(text.encoder).model_id
    key = hashlib.sha256(f"{model_id}\n{corpus.sha256}".encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", text.encoder)
    return cache_root(text) / "embeddings" / f"{corpus.name}-{safe}-{key}.npz"


def embed_corpus(corpus: TextCorpus, text: TextConfig) -> np.ndarray:
    """``[n, d]`` embeddings of ``corpus.texts`` by ``data.text.encoder``, from the cache or computed once.

    Raises:
        EmbeddingCacheError: If the cache file exists but is corrupt or belongs to other data.
    """
    encoder = ENCODERS.get(text.encoder)
    path = embedding_cache_path(corpus, text)
    if path in _MEMORY:
        return _MEMORY[path]
    if path.exists():
        embeddings = _read(path, encoder.model_id, corpus)
    else:
        print(
            f"[qflgym] embedding {len(corpus.texts)} texts of {corpus.name!r} with {text.encoder} (once; cached in "
            f"{path})",
            file=sys.stderr,
        )
        embeddings = np.asarray(encoder.encode(corpus.texts, text.batch_size), dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != len(corpus.texts) or not np.all(np.isfinite(embeddings)):
            shape = embeddings.shape
            raise ValueError(f"encoder {text.encoder!r} returned shape {shape} for {len(corpus.texts)} texts")
        _write(path, embeddings, encoder.model_id, corpus)
    embeddings.flags.writeable = False
    _MEMORY[path] = embeddings
    return embeddings


def _write(path: Path, embeddings: np.ndarray, model_id: str, corpus: TextCorpus) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        np.savez(tmp, embeddings=embeddings, model_id=model_id, corpus_sha256=corpus.sha256)
    os.replace(tmp.name, path)


def _read(path: Path, model_id: str, corpus: TextCorpus) -> np.ndarray:
    fix = "delete the file to recompute the embeddings"
    try:
        with np.load(path, allow_pickle=False) as stored:
            embeddings = stored["embeddings"]
            stored_model, stored_corpus = str(stored["model_id"]), str(stored["corpus_sha256"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise EmbeddingCacheError(f"embedding cache {path} is corrupt ({err}); {fix}") from None
    if stored_model != model_id or stored_corpus != corpus.sha256:
        raise EmbeddingCacheError(
            f"embedding cache {path} holds model {stored_model!r} / corpus {stored_corpus[:16]}, expected "
            f"{model_id!r} / {corpus.sha256[:16]}; {fix}"
        )
    if embeddings.ndim != 2 or len(embeddings) != len(corpus.texts) or not np.all(np.isfinite(embeddings)):
        raise EmbeddingCacheError(
            f"embedding cache {path} has shape {embeddings.shape} for {len(corpus.texts)} texts (or non-finite "
            f"values); {fix}"
        )
    return embeddings
