"""Wrappers for controllers that think in decisions rather than flat actions."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from .actions import ControlDecision

__all__ = ["DecisionActions"]


class DecisionActions(gym.ActionWrapper):
    """Accept a :class:`~qflgym.envs.actions.ControlDecision` (or a raw action) in ``step``.

    ``env = DecisionActions(gym.make("QFL/FullControl-v0"))`` then
    ``env.step(ControlDecision(selected=mask, lr=0.1, local_steps=2, stop=False))``. The decision is encoded
    with the env's ``action_codec``; fields the env does not control are ignored. The action space is
    unchanged, so raw actions still work.
    """

    def action(self, action: Any) -> Any:
        """Encode a decision; pass anything else through unchanged."""
        if isinstance(action, ControlDecision):
            return self.env.unwrapped.action_codec.encode(action)
        return action
