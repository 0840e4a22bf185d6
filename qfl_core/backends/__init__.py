"""Circuit simulators: the :data:`BACKENDS` registry and :func:`make_backend`.

* ``torch``: a batched exact statevector / density-matrix simulator in pure PyTorch (fast, the default).
* ``pennylane``: any PennyLane device by name (the reference, and the "how QFL code usually runs" baseline).

Third-party backends register through the ``qflgym.backends`` entry-point group or :meth:`Registry.register`.
Importing this package does not import PennyLane; the ``pennylane`` backend imports it on first use.
"""

from __future__ import annotations

from qflgym.qfl_core.backends.base import Backend, ClientNoise
from qflgym.qfl_core.backends.pennylane_backend import PennyLaneBackend
from qflgym.qfl_core.backends.torch_backend import TorchBackend
from qflgym.qfl_core.circuits import CircuitSpec
from qflgym.qfl_core.config import BackendConfig
from qflgym.registry import Registry

#: Backend classes by name; each is constructed as ``cls(spec, config)``.
BACKENDS: Registry[type[Backend]] = Registry("backend", entry_point_group="qflgym.backends")
BACKENDS.add("torch", TorchBackend)
BACKENDS.add("pennylane", PennyLaneBackend)


def make_backend(spec: CircuitSpec, config: BackendConfig) -> Backend:
    """Instantiate the backend named ``config.name`` for ``spec``."""
    return BACKENDS.get(config.name)(spec, config)


__all__ = ["BACKENDS", "Backend", "BackendConfig", "ClientNoise", "PennyLaneBackend", "TorchBackend", "make_backend"]
