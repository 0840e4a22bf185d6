"""Teacher rollouts for distillation and GRPO: a controller (or an SB3 model, or a saved policy) acting on an env.

* :func:`make_teacher` -- a teacher by registry name or path; :func:`teacher_options` -- how it acts next to a
  saved policy;
* :func:`rollout` -- run a teacher and record ``(prompt, completion)`` pairs and, optionally, the env state
  before each decision (for GRPO's reward); with an ``actor``, the actor drives the episodes and the teacher only
  labels the states it visits (DAgger's data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qflgym.agents.controllers.base import make_controller

__all__ = ["Rollout", "make_teacher", "rollout", "teacher_options"]


def make_teacher(teacher: str, env: Any, seed: int = 0, kwargs: dict[str, Any] | None = None) -> Any:
    """A controller by registry name, or a trained SB3 model from a path (``.zip`` or run directory).

    Also accepts a saved LLM policy directory (``qflgym_llm.json`` inside).
    """
    kwargs = dict(kwargs or {})
    path = Path(teacher)
    if path.is_dir() and (path / "qflgym_llm.json").is_file():
        return make_controller("llm", env, seed=seed, path=str(path), **kwargs)
    if teacher.endswith(".zip") or path.exists():
        return make_controller("sb3", env, seed=seed, path=str(path), **kwargs)
    return make_controller(teacher, env, seed=seed, **kwargs)


def teacher_options(meta: dict[str, Any], teacher: str) -> tuple[dict[str, Any], bool]:
    """Controller kwargs and ``deterministic`` for evaluating ``teacher`` next to a saved policy.

    When ``teacher`` is the one the policy was distilled from (its ``qflgym_llm.json`` metadata ``meta``), it acts
    as it did then (e.g. an SB3 teacher sampled its actions); any other teacher gets no kwargs and acts
    deterministically.
    """
    if teacher != meta.get("teacher"):
        return {}, True
    return dict(meta.get("teacher_kwargs") or {}), bool(meta.get("teacher_deterministic", True))


@dataclass
class Rollout:
    """Records of a teacher rollout.

    Attributes:
        records: One dict per decision: ``prompt``, ``completion``, ``episode``, ``step``, ``reward``.
        states: Env snapshots (``env.unwrapped.get_state()``) before each decision, when requested.
        observations: The observation before each decision, when states or observations are requested.
        labels: The controller's raw action at each of those observations (e.g. a top-k clone's client scores).
        returns: Return of every episode.
        rounds: Rounds of every episode.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    states: list[Any] = field(default_factory=list)
    observations: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)

    def extend(self, other: Rollout) -> None:
        """Append ``other``'s records, states, observations, labels and episodes (DAgger's aggregation)."""
        self.records.extend(other.records)
        self.states.extend(other.states)
        self.observations.extend(other.observations)
        self.labels.extend(other.labels)
        self.returns.extend(other.returns)
        self.rounds.extend(other.rounds)


def rollout(
    env: Any,
    controller: Any,
    codec: Any,
    episodes: int,
    seed: int,
    *,
    keep_states: bool = False,
    keep_observations: bool = False,
    deterministic: bool = True,
    progress: bool = False,
    description: str = "rollout",
    max_steps: int | None = None,
    actor: Any = None,
) -> Rollout:
    """Run ``controller`` for ``episodes`` episodes (reset seeds ``seed, seed + 1, ...``) and record them.

    Args:
        env: A qflgym env.
        controller: Anything with ``predict``.
        codec: The env's :class:`~qflgym.agents.llm.codec.TextCodec` (prompt and canonical completion).
        episodes: Episodes to run.
        seed: Reset seed of the first episode.
        keep_states: Store ``env.unwrapped.get_state()`` and the observation before every decision.
        keep_observations: Store the observation before every decision, and the controller's raw action there.
        deterministic: Passed to ``predict``.
        progress: Show a progress bar.
        description: Progress bar label.
        max_steps: Decisions recorded per episode (``None``: until it ends); a cut episode's return is the sum of
            its recorded steps' rewards.
        actor: Who acts (``predict`` protocol, always deterministic; default ``controller``). With another actor,
            ``controller`` only labels the states the actor visits (it sees every observation of the actor's
            episode, so a teacher with memory keeps it), and rewards and returns are the actor's (DAgger).
    """
    from tqdm.auto import tqdm

    out = Rollout()
    unwrapped = env.unwrapped
    bar = tqdm(total=episodes, desc=description, unit="ep", disable=not progress, dynamic_ncols=True)
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        start = np.ones(1, dtype=bool)
        total, step = 0.0, 0
        while True:
            if keep_states:
                out.states.append(unwrapped.get_state())
            label, _ = controller.predict(obs, state=None, episode_start=start, deterministic=deterministic)
            if keep_states or keep_observations:
                out.observations.append(np.array(obs, copy=True))
                out.labels.append(np.array(label, dtype=np.float64, copy=True))
            action = label
            if actor is not None:
                action, _ = actor.predict(obs, state=None, episode_start=start, deterministic=True)
            start = np.zeros(1, dtype=bool)
            record = {
                "prompt": codec.prompt(obs),
                "completion": codec.render_action(label),
                "episode": ep,
                "step": step,
            }
            obs, reward, terminated, truncated, _ = env.step(action)
            record["reward"] = float(reward)
            out.records.append(record)
            total += float(reward)
            step += 1
            if terminated or truncated or step == max_steps:
                break
        out.returns.append(total)
        out.rounds.append(step)
        bar.update(1)
        bar.set_postfix(ret=f"{np.mean(out.returns):.3f}")
    bar.close()
    return out
