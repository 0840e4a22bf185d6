"""A synthetic corpus in the codec's format, to train the tiny model's tokenizer offline."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from qflgym.agents.llm.codec.spec import (
    DEFAULT_CLIENT_COLUMNS,
    DEFAULT_GLOBAL_COLUMNS,
    ROUND_FEATURE,
    ActionSpec,
    CodecConfig,
    format_lr,
)
from qflgym.agents.llm.codec.text_codec import TextCodec
from qflgym.envs.observation import ObservationLayout

__all__ = ["synthetic_corpus"]


def _observation(
    layout: ObservationLayout,
    rng: np.random.Generator,
    client_features: Sequence[str],
    global_features: Sequence[str],
) -> np.ndarray:
    """A random flat observation: the prompt's features uniform in [0, 1], availability true with probability 0.8.

    The draws are made feature-major over the prompt's features only, so the corpus does not depend on the other
    features of the env's layout.
    """
    n = layout.n_clients
    values = rng.uniform(0, 1, n * len(client_features) + len(global_features))
    values[[client_features.index("available") + i * len(client_features) for i in range(n)]] = (
        rng.uniform(size=n) < 0.8
    )
    obs = np.zeros(layout.size, dtype=np.float64)
    clients = values[: n * len(client_features)].reshape(n, len(client_features))
    for j, name in enumerate(client_features):
        layout.client(obs, name)[:] = clients[:, j]
    for j, name in enumerate(global_features):
        layout.globals_(obs)[layout.global_features.index(name)] = values[n * len(client_features) + j]
    return obs


def synthetic_corpus(n: int = 400, seed: int = 0) -> Iterator[str]:
    """Yield ``n`` prompt+completion texts in the codec's format from random observations (any env kind).

    Used to train the tiny model's tokenizer offline; deterministic given ``seed``.
    """
    rng = np.random.default_rng(seed)
    client_features = tuple(DEFAULT_CLIENT_COLUMNS.values())
    global_features = (ROUND_FEATURE, *DEFAULT_GLOBAL_COLUMNS.values())
    kinds = [
        dict(select=True),
        dict(select=False, lr=True, steps=True),
        dict(select=False, stop=True),
        dict(select=True, lr=True, steps=True, stop=True),
    ]
    for j in range(n):
        n_clients = int(rng.integers(2, 21))
        kind = kinds[j % len(kinds)]
        spec = ActionSpec(n_clients=n_clients, lr_range=(0.002, 2.0), steps_range=(1, 8), base_lr=0.2, **kind)
        layout = ObservationLayout(n_clients)
        codec = TextCodec(spec, layout, None, CodecConfig())
        obs = _observation(layout, rng, client_features, global_features)
        selected = rng.uniform(size=n_clients) < 0.3
        words = [
            "select",
            " ".join(map(str, np.flatnonzero(selected))) or "none",
            "| lr",
            format_lr(float(np.exp(rng.uniform(np.log(0.002), np.log(2.0)))), 4),
            "| steps",
            str(int(rng.integers(1, 9))),
            "| stop",
            "yes" if rng.uniform() < 0.2 else "no",
        ]
        yield codec.prompt(obs) + " " + " ".join(words)
