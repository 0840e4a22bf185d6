"""Federation kinds by name (``model.kind``): :data:`FEDERATION_KINDS` and :func:`make_federation`.

* ``vqc`` — :class:`~qflgym.qfl_core.federation.Federation`: the variational circuit on the batched simulator.
* ``logreg``, ``mlp`` — :class:`~qflgym.qfl_core.head_federation.HeadFederation`: classical heads of comparable
  size on the same features, trained in the same federation (partition, clients, strategy, rounds).
* ``adapter`` — contributed by the agents layer through the entry-point group ``qflgym.federation_kinds``
  (:mod:`qflgym.agents.text.adapter_federation`): clients fine-tune the text encoder's PEFT adapter and a head.

Every kind is constructed as ``cls(config, seed)`` and offers the round API the envs use (``run_round``,
``evaluate``, ``state_dict``, ``client_stats``, ``profiles``, ``available``, ...).
"""

from __future__ import annotations

from typing import Any

from qflgym.registry import Registry

from .config import FederationConfig
from .federation import Federation, FederationLike, resolve_config
from .head_federation import HeadFederation

__all__ = ["FEDERATION_KINDS", "make_federation"]

FEDERATION_KINDS: Registry[type[Any]] = Registry("federation kind", entry_point_group="qflgym.federation_kinds")
FEDERATION_KINDS.add("vqc", Federation)
FEDERATION_KINDS.add("logreg", HeadFederation)
FEDERATION_KINDS.add("mlp", HeadFederation)


def make_federation(config: FederationLike, seed: int = 0) -> Any:
    """Build the federation of ``config.model.kind`` (a config, a dict or a preset name) with ``seed``."""
    resolved: FederationConfig = resolve_config(config)
    return FEDERATION_KINDS.get(resolved.model.kind)(resolved, seed)
