"""The backend contract: per-client noise settings and the :class:`Backend` base class.

A backend evaluates the ansatz of a :class:`~qflgym.qfl_core.circuits.CircuitSpec` for a batch of ``C`` clients,
each with its own weights, samples and device noise, and returns Pauli-Z expectations that are differentiable
with respect to the weights.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.config import BackendConfig
from qflgym.qfl_core.losses import masked_cross_entropy


@dataclass(frozen=True)
class ClientNoise:
    """Device noise of the clients in one backend call, one entry per client (the leading ``C`` dimension).

    Attributes:
        shots: Shots per circuit execution, or ``None`` for exact expectations.
        depolarizing: Depolarizing probability ``p`` in ``[0, 0.75]`` after every layer on every qubit.
        readout_error: Bit-flip probability ``r`` in ``[0, 0.5]`` of every measured qubit.

    Raises:
        ValueError: If the tuples differ in length or hold out-of-range values.
    """

    shots: tuple[int | None, ...]
    depolarizing: tuple[float, ...]
    readout_error: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shots", tuple(None if s is None else int(s) for s in self.shots))
        object.__setattr__(self, "depolarizing", tuple(float(p) for p in self.depolarizing))
        object.__setattr__(self, "readout_error", tuple(float(r) for r in self.readout_error))
        n = len(self.shots)
        if len(self.depolarizing) != n or len(self.readout_error) != n:
            raise ValueError(
                f"shots, depolarizing and readout_error need one entry per client; got lengths "
                f"{n}, {len(self.depolarizing)}, {len(self.readout_error)}"
            )
        if any(s is not None and s < 1 for s in self.shots):
            raise ValueError(f"shots must be None or positive integers, got {self.shots}")
        if any(not 0.0 <= p <= 0.75 for p in self.depolarizing):
            raise ValueError(f"depolarizing probabilities must lie in [0, 0.75], got {self.depolarizing}")
        if any(not 0.0 <= r <= 0.5 for r in self.readout_error):
            raise ValueError(f"readout_error probabilities must lie in [0, 0.5], got {self.readout_error}")

    @classmethod
    def exact(cls, n_clients: int) -> ClientNoise:
        """Noiseless exact expectations for ``n_clients`` clients."""
        return cls((None,) * n_clients, (0.0,) * n_clients, (0.0,) * n_clients)

    @classmethod
    def uniform(
        cls, n_clients: int, shots: int | None = None, depolarizing: float = 0.0, readout_error: float = 0.0
    ) -> ClientNoise:
        """The same settings for all ``n_clients`` clients."""
        return cls((shots,) * n_clients, (depolarizing,) * n_clients, (readout_error,) * n_clients)

    def __len__(self) -> int:
        return len(self.shots)

    @property
    def n_clients(self) -> int:
        """Number of clients ``C``."""
        return len(self.shots)

    @property
    def noiseless(self) -> bool:
        """True when no client has depolarizing or readout noise (shots may still be finite)."""
        return not any(self.depolarizing) and not any(self.readout_error)

    @property
    def has_shots(self) -> bool:
        """True when some client estimates expectations from finite shots."""
        return any(s is not None for s in self.shots)

    @property
    def is_exact(self) -> bool:
        """True when every client gets noiseless exact expectations."""
        return self.noiseless and not self.has_shots

    def __add__(self, other: ClientNoise) -> ClientNoise:
        """The clients of ``self`` followed by those of ``other`` (for one backend call over both)."""
        return ClientNoise.concat([self, other])

    @classmethod
    def concat(cls, parts: Sequence[ClientNoise]) -> ClientNoise:
        """The clients of all ``parts`` in order (valid parts make a valid whole: not validated again)."""
        if len(parts) == 1:
            return parts[0]
        return cls._valid(
            tuple(s for part in parts for s in part.shots),
            tuple(p for part in parts for p in part.depolarizing),
            tuple(r for part in parts for r in part.readout_error),
        )

    def select(self, indices: Sequence[int]) -> ClientNoise:
        """The noise of the clients at ``indices``, in that order."""
        idx = [int(i) for i in indices]
        return ClientNoise._valid(
            tuple(self.shots[i] for i in idx),
            tuple(self.depolarizing[i] for i in idx),
            tuple(self.readout_error[i] for i in idx),
        )

    @classmethod
    def _valid(
        cls, shots: tuple[int | None, ...], depolarizing: tuple[float, ...], readout_error: tuple[float, ...]
    ) -> ClientNoise:
        """A noise of entries taken from valid noises (normalized and checked already), without checking again."""
        noise = object.__new__(cls)
        object.__setattr__(noise, "shots", shots)
        object.__setattr__(noise, "depolarizing", depolarizing)
        object.__setattr__(noise, "readout_error", readout_error)
        return noise


@dataclass(frozen=True)
class GeneratorRuns:
    """The sources of randomness of one backend call over the clients of several federations.

    The first ``sizes[0]`` clients (the leading ``C`` dimension) draw from ``generators[0]``, the next
    ``sizes[1]`` from ``generators[1]``, and so on: every federation's draws are those it would make alone.

    Raises:
        ValueError: If the tuples differ in length or a size is negative.
    """

    sizes: tuple[int, ...]
    generators: tuple[torch.Generator, ...]

    def __post_init__(self) -> None:
        if len(self.sizes) != len(self.generators) or any(n < 0 for n in self.sizes):
            raise ValueError(
                f"GeneratorRuns: sizes (>= 0) and generators need one entry per run; got sizes {self.sizes} "
                f"for {len(self.generators)} generators"
            )

    @classmethod
    def of(cls, generator: torch.Generator | GeneratorRuns, n_clients: int) -> GeneratorRuns:
        """``generator`` as runs: one generator for all ``n_clients`` clients, or the runs as they are."""
        return generator if isinstance(generator, GeneratorRuns) else cls((n_clients,), (generator,))


Generators = torch.Generator | GeneratorRuns
"""The ``generator`` argument of a backend call: one generator, or per-federation runs (see :class:`GeneratorRuns`)."""


class Backend(abc.ABC):
    """Evaluates Pauli-Z expectations of a :class:`CircuitSpec` for a batch of clients.

    Subclasses implement :meth:`expvals`. Construct them through
    :func:`qflgym.qfl_core.backends.make_backend` (or :data:`~qflgym.qfl_core.backends.BACKENDS`).

    Args:
        spec: The circuit.
        config: Backend settings (dtype, PennyLane device, broadcasting).
    """

    #: Registry name of the backend.
    name: ClassVar[str] = ""
    #: Whether calls accept :class:`GeneratorRuns` (clients of several federations, each drawing from its own
    #: generator); otherwise :mod:`qflgym.qfl_core.batched` gives every federation with finite shots its own call.
    shares_generators: ClassVar[bool] = False

    def __init__(self, spec: CircuitSpec, config: BackendConfig) -> None:
        self.spec = spec
        self.config = config
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32

    def embed_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """The per-sample input this backend's simulation starts from, prepared once for fixed data ``x [C, B, F]``.

        A caller whose features do not change (a client's data set, an evaluation set) passes it (or rows of it,
        gathered like ``x``) as ``states`` with ``x``; the backend then skips preparing it per call, with the
        same bits. ``None`` (this default) when the backend prepares nothing.
        """
        return None

    @abc.abstractmethod
    def expvals(
        self,
        weights: torch.Tensor,
        x: torch.Tensor,
        noise: ClientNoise,
        generator: Generators,
        states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pauli-Z expectations of every qubit for every client and sample.

        Args:
            weights: ``[C, L, Q, 3]`` circuit weights, one model per client.
            x: ``[C, B, F]`` features, ``B`` samples per client: ``F = Q`` rotation angles, or ``F = 2^Q`` unit-norm
                amplitudes (``spec.embedding == "amplitude"``).
            noise: Shots and noise of the ``C`` clients.
            generator: The source of all sampling randomness (shots); :class:`GeneratorRuns` only where
                :attr:`shares_generators`.
            states: :meth:`embed_inputs` of ``x`` (only passed where it is not ``None``).

        Returns:
            ``[C, B, Q]`` expectations, differentiable w.r.t. ``weights`` by autograd. With finite shots the
            values are shot estimates and the gradient is that of the exact expectation (straight-through).
        """

    def loss_and_grad(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        noise: ClientNoise,
        generator: Generators,
        states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each client's training loss on its batch and its gradient w.r.t. that client's flat parameters.

        The loss is :func:`~qflgym.qfl_core.losses.masked_cross_entropy` of ``spec.logits``. This default runs
        :meth:`expvals` under autograd; backends with a hand-written backward override it to skip autograd.

        Args:
            params: ``[C, P]`` flat parameters (see :meth:`CircuitSpec.split`).
            x: ``[C, B, Q]`` rotation angles.
            y: ``[C, B]`` labels.
            mask: ``[C, B]`` 1 for real samples, 0 for padding.
            noise: Shots and noise of the ``C`` clients.
            generator: The source of all sampling randomness (shots); :class:`GeneratorRuns` only where
                :attr:`shares_generators`.
            states: :meth:`embed_inputs` of ``x`` (only passed where it is not ``None``).

        Returns:
            ``loss [C]`` (no gradient attached) and ``grad [C, P]``.
        """
        with torch.enable_grad():
            leaf = params.detach().requires_grad_(True)
            weights, readout = self.spec.split(leaf)
            z = self.expvals(weights, x, noise, generator, **({} if states is None else {"states": states}))
            loss = masked_cross_entropy(self.spec.logits(z, readout), y, mask)
            (grad,) = torch.autograd.grad(loss.sum(), leaf)
        return loss.detach(), grad

    def check_inputs(self, weights: torch.Tensor, x: torch.Tensor, noise: ClientNoise) -> None:
        """Raise a clear ``ValueError`` unless the shapes of ``weights``, ``x`` and ``noise`` agree."""
        spec = self.spec
        if weights.dim() != 4:
            raise ValueError(f"weights must be [C, L, Q, 3]; got shape {tuple(weights.shape)}")
        spec.check_weights(weights)
        c = weights.shape[0]
        if x.dim() != 3 or x.shape[0] != c or x.shape[2] != spec.n_features:
            what = "amplitudes" if spec.embedding == "amplitude" else "rotation angles"
            raise ValueError(f"x must be [C={c}, B, F={spec.n_features}] {what}; got shape {tuple(x.shape)}")
        if len(noise) != c:
            raise ValueError(f"noise describes {len(noise)} clients but weights hold {c}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec}, dtype={self.config.dtype})"
