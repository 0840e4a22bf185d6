"""Every ``QFL/...`` env id, registered (importing :mod:`qflgym.envs` calls :func:`register_envs`).

Ids follow ``QFL/<Name>[-<Variant>]-v<N>``; entry points are ``"module:Class"`` strings and
``max_episode_steps`` is the variant's default ``round_budget`` (the env also truncates by itself, so a
``round_budget`` overridden through ``config`` takes effect even though ``TimeLimit`` keeps the registered
value; pass ``max_episode_steps=`` to ``gym.make`` as well when raising the budget).
"""

from __future__ import annotations

import importlib

import gymnasium as gym

from .vector import vector_entry_point

__all__ = ["ENV_IDS", "register_envs"]

#: ``(env name, module, class prefix)`` of the four control problems.
_ENVS: tuple[tuple[str, str, str], ...] = (
    ("ClientSelection", "client_selection", "ClientSelection"),
    ("StepSize", "step_size", "StepSize"),
    ("RoundTermination", "round_termination", "RoundTermination"),
    ("FullControl", "full_control", "FullControl"),
)
#: ``(id suffix, class suffix)`` of the presets of each env.
_VARIANTS: tuple[tuple[str, str], ...] = (("", ""), ("-Hard", "Hard"), ("-Tiny", "Tiny"))

#: Every registered id, in a stable order.
ENV_IDS: tuple[str, ...] = tuple(f"QFL/{name}{suffix}-v0" for name, _, _ in _ENVS for suffix, _ in _VARIANTS)


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS` (idempotent)."""
    for name, module, prefix in _ENVS:
        for id_suffix, cls_suffix in _VARIANTS:
            env_id = f"QFL/{name}{id_suffix}-v0"
            if env_id in gym.registry:
                continue
            entry_point = f"qflgym.envs.{module}:{prefix}{cls_suffix}Env"
            cls = getattr(importlib.import_module(f"qflgym.envs.{module}"), f"{prefix}{cls_suffix}Env")
            gym.register(
                id=env_id,
                entry_point=entry_point,
                vector_entry_point=vector_entry_point(entry_point),
                max_episode_steps=int(cls.default_config()["round_budget"]),
            )
