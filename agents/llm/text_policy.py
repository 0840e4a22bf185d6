"""``TextPolicy``: the base of the LLM policies (SB3's ``predict``, decision timings, invalid-output counts).

:class:`~qflgym.agents.llm.policy.LLMPolicy` generates completions; :class:`~qflgym.agents.llm.ranker.LLMRanker`
scores client rows and renders the cohort as the canonical completion. Both act through the env's text codec.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from qflgym.agents.llm.codec import TextCodec

__all__ = ["TextPolicy", "causal_lm"]


def causal_lm(model: Any) -> Any:
    """The ``*ForCausalLM`` module behind a (possibly PEFT-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class TextPolicy(ABC):
    """An LLM policy that writes a completion per observation: SB3's ``predict``, timings and invalid counts.

    Subclasses implement :meth:`complete` (how the completions are made); ``predict`` times it and acts the
    completions through the codec.

    Args:
        codec: The env's text codec (parses completions and counts invalid ones).

    Attributes:
        decision_times: Seconds per decision of every ``predict`` call (a batch's time divided by its size).
        last_completions: The completions of the latest ``predict`` call.
    """

    uses_action_masks = False  # availability is read from the observation

    def __init__(self, codec: TextCodec) -> None:
        self.codec = codec
        self.decision_times: list[float] = []
        self.last_completions: list[str] = []
        self._episode = {"completions": 0, "invalid": 0}
        self._episode_times: list[float] = []

    @abstractmethod
    def complete(self, batch: np.ndarray, deterministic: bool) -> list[str]:
        """One completion per row of ``batch`` (flat observations ``[n, D]``)."""

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
        action_masks: Any = None,
    ) -> tuple[Any, Any]:
        """Return ``(action, state)`` for one flat observation or a batch ``[n_envs, D]`` (SB3's protocol).

        Args:
            observation: One flat observation or a batch of them.
            state: Passed through (the policy is stateless).
            episode_start: Ignored (stateless).
            deterministic: The policy's greedy choice; otherwise sampled at its ``temperature``.
            action_masks: Ignored (availability is read from the observation).
        """
        obs = np.asarray(observation)
        single = obs.ndim == 1
        batch = obs[None] if single else obs
        start = time.perf_counter()
        completions = self.complete(batch, deterministic)
        elapsed = (time.perf_counter() - start) / len(batch)
        self.decision_times += [elapsed] * len(batch)
        self._episode_times.append(elapsed)
        self.last_completions = completions
        stacked = np.stack([self._act(text, o) for o, text in zip(batch, completions, strict=True)])
        return (stacked[0] if single else stacked), state

    def _act(self, completion: str, obs: np.ndarray) -> np.ndarray:
        """The env action of ``completion`` for ``obs`` (parsed by the codec, counted)."""
        action, result = self.codec.to_action(completion, obs)
        self._episode["completions"] += 1
        self._episode["invalid"] += int(not result.valid)
        return np.asarray(action)

    @property
    def invalid_rate(self) -> float:
        """Fraction of invalid completions since the policy was built (or :meth:`reset_stats`)."""
        return self.codec.invalid_rate

    def reset_stats(self) -> None:
        """Zero the invalid-output counters and the timings."""
        self.codec.reset_stats()
        self.decision_times.clear()
        self._episode = {"completions": 0, "invalid": 0}
        self._episode_times = []

    def episode_metrics(self) -> dict[str, float]:
        """Per-episode numbers for the benchmark harness: invalid-output rate and median seconds per decision.

        Counts since the previous call (the evaluation loop calls it once at the end of every episode).
        """
        n = self._episode["completions"]
        times = self._episode_times
        metrics = {
            "invalid_rate": self._episode["invalid"] / n if n else 0.0,
            "decision_latency_s": float(np.median(times)) if times else float("nan"),
        }
        self._episode = {"completions": 0, "invalid": 0}
        self._episode_times = []
        return metrics
