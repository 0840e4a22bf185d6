"""A permutation-equivariant encoder of the client rows of a qflgym observation (the policy's features extractor).

Every client row goes through the same networks, so the encoder has no parameter whose shape depends on the
number of clients N, and permuting the rows of the input permutes the rows of the output:

1. ``r_i = row(x_i)``: each client's features embedded on their own;
2. ``c_i = pooling.context(r)_i``: what client ``i`` sees of the whole federation, either a Deep Sets reduction
   of all rows (``mean``, ``max``, ``mean_max``: the same ``c`` for every client) or one self-attention layer over
   the clients (``attention``: a ``c_i`` per client, no positional encoding);
3. ``h_i = phi([r_i ; c_i ; g])`` with the global features ``g``: the per-client embedding;
4. ``s = summary([pooling.summary(h) ; g])``: a permutation-invariant summary of the federation.

The output is ``[batch, N + 1, embed_dim]``: the N client embeddings, then the summary row.

:data:`POOLINGS` is the registry of the context/summary layers (add one with ``@POOLINGS.register("name")``; an
entry is a factory ``(embed_dim, attention_heads) -> SetPooling``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn
from typing_extensions import override

from qflgym.envs.observation import CLIENT_FEATURES, GLOBAL_FEATURES
from qflgym.registry import Registry

__all__ = ["POOLINGS", "ClientSetExtractor", "ClientSplit", "DeepSetsPooling", "SelfAttentionPooling", "SetPooling"]


class SetPooling(nn.Module, ABC):
    """The part of the encoder that lets each client see the others.

    Attributes:
        context_dim: Width of :meth:`context`'s rows.
        summary_dim: Width of :meth:`summary`'s output.
    """

    context_dim: int
    summary_dim: int

    @abstractmethod
    def context(self, rows: torch.Tensor) -> torch.Tensor:
        """``[B, N, D] -> [B, N, context_dim]``, permutation-equivariant over N."""

    @abstractmethod
    def summary(self, rows: torch.Tensor) -> torch.Tensor:
        """``[B, N, D] -> [B, summary_dim]``, permutation-invariant over N."""


#: ``"mean"``/``"max"`` reductions over the client axis.
_REDUCERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": lambda x: x.mean(dim=1),
    "max": lambda x: x.amax(dim=1),
}


class DeepSetsPooling(SetPooling):
    """Deep Sets: the concatenated reductions (mean and/or max) of all rows, the same for every client.

    Args:
        embed_dim: Row width D.
        reducers: Names in ``("mean", "max")``.
    """

    def __init__(self, embed_dim: int, reducers: tuple[str, ...]) -> None:
        super().__init__()
        self.reducers = tuple(reducers)
        self.context_dim = self.summary_dim = embed_dim * len(self.reducers)

    @override
    def summary(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([_REDUCERS[name](rows) for name in self.reducers], dim=-1)

    @override
    def context(self, rows: torch.Tensor) -> torch.Tensor:
        return self.summary(rows).unsqueeze(1).expand(-1, rows.shape[1], -1)


class SelfAttentionPooling(SetPooling):
    """One multi-head self-attention layer over the clients (no positional encoding); mean+max summary.

    Args:
        embed_dim: Row width D (a multiple of ``heads``).
        heads: Attention heads.
    """

    def __init__(self, embed_dim: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(embed_dim, heads, batch_first=True)
        self.context_dim = embed_dim
        self.summary_dim = 2 * embed_dim
        self._summary = DeepSetsPooling(embed_dim, ("mean", "max"))

    @override
    def context(self, rows: torch.Tensor) -> torch.Tensor:
        return self.attention(rows, rows, rows, need_weights=False)[0]

    @override
    def summary(self, rows: torch.Tensor) -> torch.Tensor:
        return self._summary.summary(rows)


#: Context/summary layers by name: factories ``(embed_dim, attention_heads) -> SetPooling``.
POOLINGS: Registry[Callable[[int, int], SetPooling]] = Registry("pooling")
POOLINGS.add("mean", lambda dim, heads: DeepSetsPooling(dim, ("mean",)))
POOLINGS.add("max", lambda dim, heads: DeepSetsPooling(dim, ("max",)))
POOLINGS.add("mean_max", lambda dim, heads: DeepSetsPooling(dim, ("mean", "max")))
POOLINGS.add("attention", SelfAttentionPooling)


@dataclass(frozen=True)
class ClientSplit:
    """How to read the client block ``[B, N, F]`` and the globals ``[B, G]`` out of an observation batch.

    A ``Dict`` observation ``{"clients": [N, F], "global": [G]}`` carries its sizes; a flat ``Box`` (the client
    block row-major, then the globals) is split with ``F`` and ``G`` (default: the suite's
    :data:`~qflgym.envs.observation.CLIENT_FEATURES` / :data:`~qflgym.envs.observation.GLOBAL_FEATURES`). N is
    read from each batch, so one encoder serves every federation size.

    Attributes:
        n_clients: N of the observation space the encoder was built for.
        n_client_features: F.
        n_global_features: G.
        flat: Whether observations are flat vectors.
    """

    n_clients: int
    n_client_features: int
    n_global_features: int
    flat: bool

    @classmethod
    def from_space(
        cls, space: spaces.Space, n_client_features: int | None = None, n_global_features: int | None = None
    ) -> ClientSplit:
        """Read the sizes from ``space`` (``n_*_features`` apply to flat spaces only).

        Raises:
            ValueError: A space that is neither such a ``Dict`` nor a flat ``Box`` that splits evenly.
        """
        if isinstance(space, spaces.Dict):
            clients, glob = space.spaces.get("clients"), space.spaces.get("global")
            if not (isinstance(clients, spaces.Box) and len(clients.shape) == 2):
                raise ValueError(f"Dict observation needs a 'clients' Box of shape [N, F], got {clients}")
            if not (isinstance(glob, spaces.Box) and len(glob.shape) == 1):
                raise ValueError(f"Dict observation needs a 'global' Box of shape [G], got {glob}")
            return cls(int(clients.shape[0]), int(clients.shape[1]), int(glob.shape[0]), flat=False)
        if not (isinstance(space, spaces.Box) and len(space.shape) == 1):
            raise ValueError(
                f"observation space {space} is neither a flat Box nor a Dict with 'clients' and 'global' entries"
            )
        f = len(CLIENT_FEATURES) if n_client_features is None else int(n_client_features)
        g = len(GLOBAL_FEATURES) if n_global_features is None else int(n_global_features)
        n_clients = _flat_clients(int(space.shape[0]), f, g)
        return cls(n_clients, f, g, flat=True)

    def __call__(self, obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clients [B, N, F], globals [B, G])`` of a preprocessed observation batch."""
        if not self.flat:
            return obs["clients"], obs["global"]
        n_clients = _flat_clients(int(obs.shape[-1]), self.n_client_features, self.n_global_features)
        client_size = n_clients * self.n_client_features
        clients = obs[:, :client_size].reshape(obs.shape[0], n_clients, self.n_client_features)
        return clients, obs[:, client_size:]


def _flat_clients(size: int, n_client_features: int, n_global_features: int) -> int:
    rest = size - n_global_features
    if n_client_features < 1 or rest < n_client_features or rest % n_client_features:
        raise ValueError(
            f"a flat observation of size {size} does not split into N client rows of n_client_features="
            f"{n_client_features} plus n_global_features={n_global_features}; pass the right sizes in "
            "policy_kwargs or use the env's Dict observation (config={'observation': 'dict'})"
        )
    return rest // n_client_features


def _mlp(sizes: list[int], activation_fn: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), activation_fn()]
    return nn.Sequential(*layers)


class ClientSetExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: ``[B, N + 1, embed_dim]`` (the client embeddings, then the summary row).

    Args:
        observation_space: A flat ``Box`` or a ``Dict`` observation space of a qflgym env.
        pooling: A :data:`POOLINGS` name.
        embed_dim: Width of every embedding.
        attention_heads: Heads of the ``attention`` pooling.
        activation_fn: Activation after every linear layer.
        n_client_features: F of a flat observation (default: the suite's).
        n_global_features: G of a flat observation (default: the suite's).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        pooling: str = "mean_max",
        embed_dim: int = 64,
        attention_heads: int = 4,
        activation_fn: type[nn.Module] = nn.ReLU,
        n_client_features: int | None = None,
        n_global_features: int | None = None,
    ) -> None:
        split = ClientSplit.from_space(observation_space, n_client_features, n_global_features)
        super().__init__(observation_space, features_dim=embed_dim)
        self.split = split
        f, g, d = split.n_client_features, split.n_global_features, embed_dim
        mlp = partial(_mlp, activation_fn=activation_fn)
        self.row = mlp([f, d])
        self.pooling = POOLINGS.get(pooling)(d, attention_heads)
        self.phi = mlp([d + self.pooling.context_dim + g, d, d])
        self.summary = mlp([self.pooling.summary_dim + g, d])

    @override
    def forward(self, observations: Any) -> torch.Tensor:
        clients, glob = self.split(observations)
        rows = self.row(clients)
        per_client_glob = glob.unsqueeze(1).expand(-1, rows.shape[1], -1)
        h = self.phi(torch.cat([rows, self.pooling.context(rows), per_client_glob], dim=-1))
        s = self.summary(torch.cat([self.pooling.summary(h), glob], dim=-1))
        return torch.cat([h, s.unsqueeze(1)], dim=1)
