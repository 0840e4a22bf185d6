"""Classical heads (``model.kind`` ``logreg`` / ``mlp``) trained in the same federation as the VQC.

The head sees exactly the features the circuit would (``circuit.n_qubits`` angles, or ``2^n_qubits``
amplitudes with ``circuit.embedding='amplitude'``), on the same split, partition, clients and strategy, so a
run differs from the VQC's only in the model. Its size is set by :data:`~qflgym.qfl_core.heads.HEADS`
(``mlp``: matched to the circuit's parameter count unless ``model.hidden`` is set). A training sample costs
one execution (a forward and backward pass on the client's classical hardware) and no shots.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .heads import HEADS
from .module_federation import ModuleFederation

__all__ = ["HeadFederation"]


class HeadFederation(ModuleFederation):
    """A classical head on the reduced features (see the module docstring)."""

    def build_module(self, rng: np.random.Generator) -> nn.Module:
        """The head named by ``model.kind``."""
        self._features = {
            "train": torch.as_tensor(self.data.x_train),
            "val": torch.as_tensor(self.data.x_val),
            "test": torch.as_tensor(self.data.x_test),
        }
        return HEADS.get(self.config.model.kind)(self.data.n_features, self.n_classes, self.config, rng)

    def inputs(self, split: str, indices: np.ndarray) -> Any:
        """Rows ``indices`` of the split's features."""
        return self._features[split][torch.as_tensor(indices)]

    @property
    def executions_per_sample(self) -> int:
        """One forward and backward pass per sample."""
        return 1
