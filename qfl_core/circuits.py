"""The variational quantum classifier: ansatz, parameter layout, PennyLane template and readout.

:class:`CircuitSpec` is the single definition of the model every client trains. Both backends in
:mod:`qflgym.qfl_core.backends` implement exactly the ansatz described here (and in ``docs/architecture.md``):

For layer ``l = 0..L-1``:

1. embedding ``RX(x_q)`` on every qubit ``q`` (only before layer 0 unless ``reupload``); with
   ``embedding="amplitude"`` instead the state ``|x> = sum_i x_i |i>`` of a unit vector ``x`` of ``2^Q`` real
   amplitudes, once, before layer 0 (PennyLane's ``AmplitudeEmbedding``),
2. ``Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi)`` on every qubit, ``weights[l, q] = (phi, theta, omega)``,
3. if ``Q > 1``: ``CNOT(q, (q + r_l) % Q)`` for ``q = 0..Q-1`` in order, with ``r_l`` from :meth:`CircuitSpec.ranges`,
4. optional noise: ``DepolarizingChannel(p)`` on every qubit.

Then optional readout noise ``BitFlip(r)`` on every qubit and the Pauli-Z expectation of every qubit; the
readout uses the first ``readout_qubits`` of them (all by default: a one- or few-qubit readout when set).
Steps 2 and 3 of one layer are PennyLane's ``StronglyEntanglingLayers`` with ``ranges=(r_l,)``.

A model is a flat parameter vector ``theta`` of length :attr:`CircuitSpec.n_params`: the circuit weights
(``L * Q * 3``, row-major ``[L, Q, 3]``) followed by the readout parameters (``linear``: ``W [M, K]`` row-major
for the ``M`` read-out qubits,
then ``b [K]``; ``grouping``: none). :meth:`CircuitSpec.split` returns views of both parts.

PennyLane is imported lazily (only :meth:`CircuitSpec.qfunc` and :meth:`CircuitSpec.noisy_qfunc` need it), so
importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from qflgym.qfl_core.config import CircuitConfig

#: Fixed logit scale of the ``grouping`` readout: ``logits_k = GROUPING_SCALE * mean(z_q for q % K == k)``.
#: With ``<Z>`` in ``[-1, 1]`` the logits span ``[-5, 5]``, enough for confident softmax probabilities.
GROUPING_SCALE = 5.0

#: Standard deviation of the initial circuit weights, in radians (see :meth:`CircuitSpec.init_params`).
INIT_WEIGHT_STD = 0.1 * math.pi

Entangler = Literal["ring", "long_range"]
Readout = Literal["linear", "grouping"]
Embedding = Literal["angle", "amplitude"]


def _as_torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float64": torch.float64, "float32": torch.float32}[str(dtype)]
    except KeyError:
        raise ValueError(f"dtype must be 'float64' or 'float32' (or a torch dtype), got {dtype!r}") from None


@dataclass(frozen=True)
class CircuitSpec:
    """Shape and structure of the variational quantum classifier.

    Attributes:
        n_qubits: Qubits ``Q`` (also the number of input features).
        n_layers: Variational layers ``L``.
        reupload: Re-embed the input before every layer instead of only before the first.
        entangler: ``"ring"`` (CNOT range 1) or ``"long_range"`` (StronglyEntanglingLayers' default ranges).
        readout: ``"linear"`` (trainable ``z @ W + b``) or ``"grouping"`` (fixed mean of qubit groups).
        n_classes: Number of classes ``K``.
        embedding: ``"angle"`` (``RX(x_q)``, ``Q`` features) or ``"amplitude"`` (a unit vector of ``2^Q``
            real amplitudes, no re-uploading).
        readout_qubits: Pauli-Z expectations of the first ``M`` qubits feed the readout (``None``: all ``Q``).

    Raises:
        ValueError: On sizes below 1, an unknown entangler/readout/embedding, fewer than 2 classes, a
            ``grouping`` readout with more classes than read-out qubits, ``readout_qubits`` above ``n_qubits``,
            or amplitude embedding with re-uploading.
    """

    n_qubits: int
    n_layers: int
    reupload: bool = False
    entangler: Entangler = "long_range"
    readout: Readout = "linear"
    n_classes: int = 2
    embedding: Embedding = "angle"
    readout_qubits: int | None = None

    def __post_init__(self) -> None:
        if self.n_qubits < 1 or self.n_layers < 1:
            raise ValueError(f"n_qubits and n_layers must be >= 1, got {self.n_qubits} and {self.n_layers}")
        if self.entangler not in ("ring", "long_range"):
            raise ValueError(f"entangler must be 'ring' or 'long_range', got {self.entangler!r}")
        if self.readout not in ("linear", "grouping"):
            raise ValueError(f"readout must be 'linear' or 'grouping', got {self.readout!r}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.embedding not in ("angle", "amplitude"):
            raise ValueError(f"embedding must be 'angle' or 'amplitude', got {self.embedding!r}")
        if self.embedding == "amplitude" and self.reupload:
            raise ValueError("embedding='amplitude' prepares the state once: it cannot be combined with reupload=True")
        if self.readout_qubits is not None and not 1 <= self.readout_qubits <= self.n_qubits:
            raise ValueError(f"readout_qubits must be in [1, n_qubits={self.n_qubits}], got {self.readout_qubits}")
        if self.readout == "grouping" and self.n_classes > self.n_readout:
            raise ValueError(
                f"readout='grouping' needs at least one read-out qubit per class; got {self.n_readout} read-out "
                f"qubits for {self.n_classes} classes: use readout='linear' or more (read-out) qubits"
            )

    @classmethod
    def from_config(cls, circuit_config: CircuitConfig, n_classes: int) -> CircuitSpec:
        """Build the spec of a :class:`~qflgym.qfl_core.config.CircuitConfig` for ``n_classes`` classes."""
        return cls(
            n_qubits=circuit_config.n_qubits,
            n_layers=circuit_config.n_layers,
            reupload=circuit_config.reupload,
            entangler=circuit_config.entangler,
            readout=circuit_config.readout,
            n_classes=n_classes,
            embedding=circuit_config.embedding,
            readout_qubits=circuit_config.readout_qubits,
        )

    @staticmethod
    def feature_count(n_qubits: int, embedding: Embedding) -> int:
        """Input features of a circuit: ``Q`` rotation angles, or ``2^Q`` amplitudes."""
        return 2**n_qubits if embedding == "amplitude" else n_qubits

    @property
    def n_features(self) -> int:
        """Input features per sample: ``Q`` (angle embedding) or ``2^Q`` (amplitude embedding)."""
        return self.feature_count(self.n_qubits, self.embedding)

    @property
    def n_readout(self) -> int:
        """Read-out qubits ``M`` (``readout_qubits``, or all ``Q``)."""
        return self.n_qubits if self.readout_qubits is None else self.readout_qubits

    # ------------------------------------------------------------------ parameter layout
    @staticmethod
    def shape(n_layers: int, n_wires: int) -> tuple[int, int, int]:
        """Expected shape of the circuit weights (as PennyLane's ``StronglyEntanglingLayers.shape``)."""
        return n_layers, n_wires, 3

    @property
    def weight_shape(self) -> tuple[int, int, int]:
        """Shape ``(L, Q, 3)`` of the circuit weights of one model."""
        return self.shape(self.n_layers, self.n_qubits)

    @property
    def n_circuit_params(self) -> int:
        """Number of circuit weights ``L * Q * 3``."""
        return self.n_layers * self.n_qubits * 3

    @property
    def n_readout_params(self) -> int:
        """Number of readout parameters: ``M * K + K`` for ``linear`` (``M`` read-out qubits), 0 for ``grouping``."""
        if self.readout == "linear":
            return self.n_readout * self.n_classes + self.n_classes
        return 0

    @property
    def n_params(self) -> int:
        """Length ``P`` of the flat parameter vector."""
        return self.n_circuit_params + self.n_readout_params

    def ranges(self) -> tuple[int, ...]:
        """CNOT range ``r_l`` of every layer (0 when ``Q == 1``: no CNOTs).

        ``ring``: ``r_l = 1``; ``long_range``: ``r_l = (l % (Q - 1)) + 1``, the default of PennyLane's
        ``StronglyEntanglingLayers``.
        """
        q = self.n_qubits
        if q == 1:
            return (0,) * self.n_layers
        if self.entangler == "ring":
            return (1,) * self.n_layers
        return tuple((layer % (q - 1)) + 1 for layer in range(self.n_layers))

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split flat parameters into circuit weights and readout parameters (views, no copy).

        Args:
            theta: ``[..., P]`` parameters.

        Returns:
            ``weights [..., L, Q, 3]`` and ``readout [..., R]``.

        Raises:
            ValueError: If the last dimension is not :attr:`n_params`.
        """
        if theta.shape[-1:] != (self.n_params,):
            raise ValueError(
                f"parameters must have last dimension n_params={self.n_params} "
                f"({self.n_circuit_params} circuit + {self.n_readout_params} readout); got shape {tuple(theta.shape)}"
            )
        weights = theta[..., : self.n_circuit_params].unflatten(-1, self.weight_shape)
        return weights, theta[..., self.n_circuit_params :]

    def check_weights(self, weights: Any) -> None:
        """Raise a clear error unless ``weights`` has trailing shape :attr:`weight_shape`.

        Raises:
            ValueError: Naming the expected ``shape(n_layers, n_wires)`` and the shape given.
        """
        shape = tuple(getattr(weights, "shape", np.shape(weights)))
        if shape[-3:] != self.weight_shape:
            raise ValueError(
                f"weights must have shape (..., n_layers, n_wires, 3) = "
                f"(..., {self.n_layers}, {self.n_qubits}, 3) = CircuitSpec.shape({self.n_layers}, "
                f"{self.n_qubits}); got {shape}"
            )

    # ------------------------------------------------------------------ readout
    def grouping_matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The fixed ``[M, K]`` matrix ``G`` of the grouping readout: ``logits = z[..., :M] @ G``.

        ``G[q, k] = GROUPING_SCALE / |{q' < M : q' % K == k}|`` when ``q % K == k``, else 0.
        """
        q, k = self.n_readout, self.n_classes
        g = torch.zeros(q, k, dtype=dtype)
        for qubit in range(q):
            g[qubit, qubit % k] = 1.0
        return g * (GROUPING_SCALE / g.sum(0, keepdim=True))

    def logits(self, z: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        """Map Pauli-Z expectations to class logits.

        Only the first ``M`` (:attr:`n_readout`) expectations are read.
        ``linear``: ``logits = z @ W + b`` with ``W [M, K]`` and ``b [K]`` read from ``readout``.
        ``grouping``: ``logits_k = GROUPING_SCALE * mean(z_q for q < M with q % K == k)`` (``readout`` is empty).

        Args:
            z: ``[C, B, Q]`` expectations (or ``[B, Q]`` with ``readout [R]``).
            readout: ``[C, R]`` readout parameters from :meth:`split` (or ``[R]``).

        Returns:
            ``[C, B, K]`` logits (``[B, K]`` for unbatched inputs).
        """
        q, k = self.n_readout, self.n_classes
        if z.shape[-1] != self.n_qubits:
            raise ValueError(f"z must have last dimension n_qubits={self.n_qubits}; got shape {tuple(z.shape)}")
        if readout.shape[-1] != self.n_readout_params:
            raise ValueError(
                f"readout must have last dimension {self.n_readout_params}; got shape {tuple(readout.shape)}"
            )
        z = z[..., :q]
        if self.readout == "grouping":
            return z @ self.grouping_matrix(z.dtype).to(z.device)
        w = readout[..., : q * k].unflatten(-1, (q, k))
        b = readout[..., q * k :].unsqueeze(-2)
        if z.dim() == 3 and w.dim() == 3:
            return torch.baddbmm(b, z, w)
        return z @ w + b

    # ------------------------------------------------------------------ initialization
    def init_params(self, rng: np.random.Generator, dtype: torch.dtype | str = torch.float64) -> torch.Tensor:
        """Draw initial parameters of one model.

        Circuit weights are ``N(0, (0.1 pi)^2)``: every ``Rot`` starts close to the identity, so the initial
        circuit is near the (informative) embedding and gradients are large (no barren plateau at these
        sizes). Linear readout: ``W ~ N(0, 1 / Q)`` (LeCun normal for ``z`` in ``[-1, 1]``), ``b = 0``.

        Args:
            rng: NumPy generator (structural randomness comes from the federation seed).
            dtype: ``torch.float64``/``torch.float32`` or ``"float64"``/``"float32"``.

        Returns:
            ``[P]`` parameters.
        """
        weights = rng.normal(0.0, INIT_WEIGHT_STD, size=self.n_circuit_params)
        parts = [weights]
        if self.readout == "linear":
            parts.append(rng.normal(0.0, 1.0 / math.sqrt(self.n_readout), size=self.n_readout * self.n_classes))
            parts.append(np.zeros(self.n_classes))
        return torch.as_tensor(np.concatenate(parts), dtype=_as_torch_dtype(dtype))

    # ------------------------------------------------------------------ PennyLane template
    def _layers(self, inputs: Any, weights: Any, depolarizing: float = 0.0) -> None:
        import pennylane as qp

        self.check_weights(weights)
        wires = range(self.n_qubits)
        ranges = self.ranges()
        for layer in range(self.n_layers):
            if layer == 0 and self.embedding == "amplitude":
                qp.AmplitudeEmbedding(inputs, wires=wires, normalize=True)
            elif layer == 0 or self.reupload:
                qp.AngleEmbedding(inputs, wires=wires, rotation="X")
            # For one wire PennyLane rejects explicit ranges; its default (no CNOTs) is what we want.
            layer_ranges = (ranges[layer],) if self.n_qubits > 1 else None
            qp.StronglyEntanglingLayers(weights[..., layer : layer + 1, :, :], wires=wires, ranges=layer_ranges)
            if depolarizing > 0:
                for q in wires:
                    qp.DepolarizingChannel(depolarizing, wires=q)

    def qfunc(self, inputs: Any, weights: Any) -> list[Any]:
        """PennyLane quantum function of the noiseless ansatz (``inputs`` first, as for ``qnn.TorchLayer``).

        Args:
            inputs: ``[F]`` features (``Q`` angles or ``2^Q`` amplitudes), or ``[B, F]`` for broadcasting.
            weights: ``[L, Q, 3]`` circuit weights (see :meth:`shape`).

        Returns:
            ``[qp.expval(qp.PauliZ(q)) for q in range(Q)]``.

        Raises:
            ValueError: If ``weights`` does not have shape ``shape(n_layers, n_qubits)``.
        """
        import pennylane as qp

        self._layers(inputs, weights)
        return [qp.expval(qp.PauliZ(q)) for q in range(self.n_qubits)]

    def noisy_qfunc(self, inputs: Any, weights: Any, depolarizing: float, readout_error: float) -> list[Any]:
        """PennyLane quantum function of the ansatz with noise (needs a mixed-state device).

        ``DepolarizingChannel(depolarizing)`` on every qubit after every layer (omitted when 0) and
        ``BitFlip(readout_error)`` on every qubit before measuring (omitted when 0).

        Args:
            inputs: ``[Q]`` or ``[B, Q]`` rotation angles.
            weights: ``[L, Q, 3]`` circuit weights.
            depolarizing: Depolarizing probability ``p`` in ``[0, 0.75]``.
            readout_error: Bit-flip probability ``r`` in ``[0, 0.5]``.

        Returns:
            ``[qp.expval(qp.PauliZ(q)) for q in range(Q)]``.
        """
        import pennylane as qp

        self._layers(inputs, weights, depolarizing)
        if readout_error > 0:
            for q in range(self.n_qubits):
                qp.BitFlip(readout_error, wires=q)
        return [qp.expval(qp.PauliZ(q)) for q in range(self.n_qubits)]

    # ------------------------------------------------------------------ structure helpers for simulators
    def cnot_permutation(self, layer: int) -> np.ndarray:
        """Basis-state permutation of the CNOT block of ``layer``.

        Basis index ``i`` has qubit ``q`` as bit ``Q - 1 - q`` (wire 0 most significant, as in PennyLane).

        Returns:
            ``f [2^Q]`` with ``CNOTs |i> = |f[i]>``.
        """
        q_count = self.n_qubits
        idx = np.arange(2**q_count)
        bits = (idx[:, None] >> (q_count - 1 - np.arange(q_count))[None, :]) & 1
        r = self.ranges()[layer]
        if q_count > 1:
            for control in range(q_count):
                target = (control + r) % q_count
                bits[:, target] ^= bits[:, control]
        return (bits << (q_count - 1 - np.arange(q_count))[None, :]).sum(1)


def z_signs(n_qubits: int, permutation: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Eigenvalues of ``Z_q`` on the basis states: ``S[i, q] = 1 - 2 * bit_q(i)`` (wire 0 most significant).

    Args:
        n_qubits: Number of qubits.
        permutation: Optional basis permutation ``f``; returns ``S[f]`` (the signs after the permutation).

    Returns:
        ``[2^Q, Q]`` array of ``+-1``.
    """
    idx = np.arange(2**n_qubits)
    if permutation is not None:
        idx = np.asarray(permutation)
    bits = (idx[:, None] >> (n_qubits - 1 - np.arange(n_qubits))[None, :]) & 1
    return (1 - 2 * bits).astype(np.float64)
