"""Every ``QFL/...`` env id, registered (importing :mod:`qflgym.envs` calls :func:`register_envs`).

Ids follow ``QFL/<Name>[-<Variant>]-v<N>``. Each id is one row of :data:`REGISTRATIONS`: the entry point
(a ``"module:Class"`` string) and the env presets (``configs/envs/<name>.yaml``) that make the variant,
passed as registration kwargs (``gym.register(..., kwargs={"presets": ("hard",)})``, as Gymnasium does for
its own variants). Adding an id is adding a row.

The ids are registered without ``max_episode_steps``: the env truncates itself after its config's
``round_budget`` and reports that budget as ``env.spec.max_episode_steps``, so
``gym.make(id, config={"round_budget": 12})`` runs 12 rounds. ``gym.make(id, max_episode_steps=n)`` still
adds a ``TimeLimit`` of ``n`` steps on top.
"""

from __future__ import annotations

from typing import NamedTuple

import gymnasium as gym

from .vector import vector_entry_point

__all__ = ["ENV_IDS", "REGISTRATIONS", "TEXT_ENV_IDS", "EnvRegistration", "register_envs"]


class EnvRegistration(NamedTuple):
    """One registered id: ``gym.register(id, entry_point, kwargs={"presets": presets})``."""

    id: str
    entry_point: str
    presets: tuple[str, ...] = ()


_CLIENT_SELECTION = "qflgym.envs.client_selection:ClientSelectionEnv"
_STEP_SIZE = "qflgym.envs.step_size:StepSizeEnv"
_ROUND_TERMINATION = "qflgym.envs.round_termination:RoundTerminationEnv"
_FULL_CONTROL = "qflgym.envs.full_control:FullControlEnv"

#: Every registered id, in a stable order.
REGISTRATIONS: tuple[EnvRegistration, ...] = (
    EnvRegistration("QFL/ClientSelection-v0", _CLIENT_SELECTION),
    EnvRegistration("QFL/ClientSelection-Hard-v0", _CLIENT_SELECTION, ("hard",)),
    EnvRegistration("QFL/ClientSelection-Tiny-v0", _CLIENT_SELECTION, ("tiny",)),
    EnvRegistration("QFL/StepSize-v0", _STEP_SIZE),
    EnvRegistration("QFL/StepSize-Hard-v0", _STEP_SIZE, ("hard",)),
    EnvRegistration("QFL/StepSize-Tiny-v0", _STEP_SIZE, ("tiny",)),
    EnvRegistration("QFL/RoundTermination-v0", _ROUND_TERMINATION),
    EnvRegistration("QFL/RoundTermination-Hard-v0", _ROUND_TERMINATION, ("hard",)),
    EnvRegistration("QFL/RoundTermination-Tiny-v0", _ROUND_TERMINATION, ("tiny",)),
    EnvRegistration("QFL/FullControl-v0", _FULL_CONTROL),
    EnvRegistration("QFL/FullControl-Hard-v0", _FULL_CONTROL, ("hard",)),
    EnvRegistration("QFL/FullControl-Tiny-v0", _FULL_CONTROL, ("tiny",)),
    EnvRegistration("QFL/ClientSelection-v1", _CLIENT_SELECTION, ("v1", "client_selection_v1")),
    EnvRegistration("QFL/ClientSelection-Hard-v1", _CLIENT_SELECTION, ("v1", "client_selection_v1", "hard_v1")),
    EnvRegistration("QFL/ClientSelection-Large-v1", _CLIENT_SELECTION, ("v1", "client_selection_v1", "large_v1")),
    EnvRegistration("QFL/ClientSelection-Tiny-v1", _CLIENT_SELECTION, ("v1", "client_selection_v1", "tiny_v1")),
    EnvRegistration("QFL/StepSize-v1", _STEP_SIZE, ("v1", "step_size_v1")),
    EnvRegistration("QFL/StepSize-Hard-v1", _STEP_SIZE, ("v1", "step_size_v1", "hard_v1")),
    EnvRegistration("QFL/StepSize-Tiny-v1", _STEP_SIZE, ("v1", "step_size_v1", "tiny_v1")),
    EnvRegistration("QFL/RoundTermination-v1", _ROUND_TERMINATION, ("v1", "round_termination_v1")),
    EnvRegistration("QFL/RoundTermination-Hard-v1", _ROUND_TERMINATION, ("v1", "round_termination_v1", "hard_v1")),
    EnvRegistration("QFL/RoundTermination-Tiny-v1", _ROUND_TERMINATION, ("v1", "round_termination_v1", "tiny_v1")),
    EnvRegistration("QFL/FullControl-v1", _FULL_CONTROL, ("v1", "full_control_v1")),
    EnvRegistration("QFL/FullControl-Hard-v1", _FULL_CONTROL, ("v1", "full_control_v1", "hard_v1")),
    EnvRegistration("QFL/FullControl-Tiny-v1", _FULL_CONTROL, ("v1", "full_control_v1", "tiny_v1")),
    EnvRegistration("QFL/ClientSelection-Text-v1", _CLIENT_SELECTION, ("v1", "client_selection_v1", "text_v1")),
    EnvRegistration(
        "QFL/ClientSelection-TextAdapter-v1",
        _CLIENT_SELECTION,
        ("v1", "client_selection_v1", "text_v1", "text_adapter_v1"),
    ),
)

#: The ids whose federation learns text (their first use fetches the corpus and embeds it; docs/text_qfl.md).
TEXT_ENV_IDS: tuple[str, ...] = tuple(r.id for r in REGISTRATIONS if "-Text" in r.id)

#: Every registered id, in the order of :data:`REGISTRATIONS`.
ENV_IDS: tuple[str, ...] = tuple(r.id for r in REGISTRATIONS)


def register_envs() -> None:
    """Register every row of :data:`REGISTRATIONS` (idempotent)."""
    for r in REGISTRATIONS:
        if r.id not in gym.registry:
            gym.register(
                id=r.id,
                entry_point=r.entry_point,
                vector_entry_point=vector_entry_point(r.entry_point),
                kwargs={"presets": r.presets},
            )
