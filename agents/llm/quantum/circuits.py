"""The two adapter circuits, each defined once with PennyLane and executed by the torch kernel of :mod:`.kernel`.

* :class:`GeneratorCircuit` (QPA): ``|0…0⟩``, then ``depth`` layers of RY on every wire and an open CNOT chain;
  read out the probabilities of all ``2**n`` basis states.
* :class:`EmbeddingCircuit` (QAA): a real vector amplitude-embedded (zero-padded to ``2**n``, normalized), then
  ``depth`` layers of RY and RZ on every wire and a CNOT entangler; read out the probabilities or ``⟨Z_k⟩``.

``qnode()`` gives a PennyLane QNode (draw it with ``qml.draw(circuit.qnode())(...)``, export it to QASM with
``qml.to_openqasm``); ``__call__`` runs the same circuit on a batch in torch with autograd. The tests check the two
agree, outputs and gradients, to 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qflgym.agents.llm.quantum.kernel import (
    ENTANGLERS,
    apply_layer,
    entangle,
    expval_z,
    probabilities,
    ry_matrices,
    ry_rz_matrices,
    zero_state,
)

__all__ = ["READOUTS", "EmbeddingCircuit", "GeneratorCircuit"]

#: QAA read-outs: the basis probabilities (``2**n`` values) or the Pauli-Z expectations (``n`` values).
READOUTS = ("expval", "probs")


def _entangle(qml: Any, n_qubits: int, kind: str) -> None:
    for k in range(n_qubits - 1):
        qml.CNOT(wires=[k, k + 1])
    if kind == "ring" and n_qubits > 2:
        qml.CNOT(wires=[n_qubits - 1, 0])


@dataclass(frozen=True)
class GeneratorCircuit:
    """QPA's QNN: RY layers and an open CNOT chain from ``|0…0⟩``, read out as basis probabilities.

    Attributes:
        n_qubits: Wires.
        depth: Layers (each: RY on every wire, then CNOT(0,1) … CNOT(n-2,n-1)).
    """

    n_qubits: int
    depth: int

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the angles: ``(depth, n_qubits)``."""
        return (self.depth, self.n_qubits)

    def qfunc(self, weights: Any) -> Any:
        """The PennyLane quantum function (``weights`` of :attr:`shape`)."""
        import pennylane as qml

        for layer in range(self.depth):
            for k in range(self.n_qubits):
                qml.RY(weights[layer, k], wires=k)
            _entangle(qml, self.n_qubits, "chain")
        return qml.probs(wires=range(self.n_qubits))

    def qnode(self, **kwargs: Any) -> Any:
        """A ``default.qubit`` QNode of :meth:`qfunc` (``kwargs`` go to ``qml.QNode``, e.g. ``interface``)."""
        import pennylane as qml

        return qml.QNode(self.qfunc, qml.device("default.qubit", wires=self.n_qubits), **kwargs)

    def __call__(self, weights: torch.Tensor) -> torch.Tensor:
        """Basis probabilities ``(2**n_qubits,)`` from angles of :attr:`shape` (torch kernel, real arithmetic)."""
        state = zero_state(self.n_qubits, 1, weights.dtype, weights.device)
        gates = ry_matrices(weights)
        for layer in range(self.depth):
            state = entangle(apply_layer(state, gates[layer]), self.n_qubits, "chain")
        return probabilities(state)[0]


@dataclass(frozen=True)
class EmbeddingCircuit:
    """QAA's PQC: amplitude embedding, then RY/RZ layers with a CNOT entangler, read out as probs or ⟨Z⟩.

    Attributes:
        n_qubits: Wires; inputs of up to ``2**n_qubits`` values are zero-padded and normalized.
        depth: Layers (each: RY then RZ on every wire, then the entangler).
        entangler: ``chain`` or ``ring`` (see :data:`~qflgym.agents.llm.quantum.kernel.ENTANGLERS`).
        readout: ``expval`` (``n_qubits`` outputs) or ``probs`` (``2**n_qubits`` outputs).
    """

    n_qubits: int
    depth: int
    entangler: str = "ring"
    readout: str = "expval"

    def __post_init__(self) -> None:
        if self.entangler not in ENTANGLERS:
            raise ValueError(f"entangler must be one of {', '.join(ENTANGLERS)}, got {self.entangler!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the angles: ``(depth, n_qubits, 2)`` (RY angle, RZ angle)."""
        return (self.depth, self.n_qubits, 2)

    @property
    def n_outputs(self) -> int:
        """Values read out per input."""
        return self.n_qubits if self.readout == "expval" else 2**self.n_qubits

    def qfunc(self, inputs: Any, weights: Any) -> Any:
        """The PennyLane quantum function (``inputs`` first, as ``qml.qnn.TorchLayer`` expects)."""
        import pennylane as qml

        wires = range(self.n_qubits)
        qml.AmplitudeEmbedding(inputs, wires=wires, pad_with=0.0, normalize=True)
        for layer in range(self.depth):
            for k in wires:
                qml.RY(weights[layer, k, 0], wires=k)
                qml.RZ(weights[layer, k, 1], wires=k)
            _entangle(qml, self.n_qubits, self.entangler)
        if self.readout == "probs":
            return qml.probs(wires=wires)
        return [qml.expval(qml.PauliZ(k)) for k in wires]

    def qnode(self, **kwargs: Any) -> Any:
        """A ``default.qubit`` QNode of :meth:`qfunc` (``kwargs`` go to ``qml.QNode``)."""
        import pennylane as qml

        return qml.QNode(self.qfunc, qml.device("default.qubit", wires=self.n_qubits), **kwargs)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(batch, d)`` inputs to ``2**n_qubits`` and normalize them (an all-zero row stays zero)."""
        padded = torch.nn.functional.pad(inputs, (0, 2**self.n_qubits - inputs.shape[-1]))
        return padded / padded.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(padded.dtype).tiny)

    def __call__(self, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Read-outs ``(batch, n_outputs)`` of ``(batch, d)`` real inputs (torch kernel, complex arithmetic)."""
        state = self.embed(inputs)
        gates = ry_rz_matrices(weights[..., 0], weights[..., 1])
        for layer in range(self.depth):
            state = entangle(apply_layer(state, gates[layer]), self.n_qubits, self.entangler)
        probs = probabilities(state)
        return probs if self.readout == "probs" else expval_z(probs)
