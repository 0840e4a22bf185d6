"""``lookahead``: a planning oracle that tries candidate decisions on exact copies of the env.

**Privileged.** It reads and restores the simulator's state (``env.unwrapped.get_state()`` /
``set_state()``), so it sees the consequences of a decision before taking it: the upper reference of a
benchmark, never a competitor. Every report labels it so (:data:`PRIVILEGED`).

At every step it

1. snapshots the env,
2. builds the candidates: ``candidates`` random decisions from its own generator (for a selection action:
   random cohorts of 1 .. budget available clients; otherwise samples of the action space that run a round),
   the decisions of the ``proposals`` controllers for the current observation, and "stop" where the env can
   stop,
3. runs each candidate for ``horizon`` rounds (``None``: until the episode ends) -- the candidate first, then
   ``rollout`` (``"repeat"`` the candidate, or a controller's decisions) -- and scores the rollout with
   ``score`` (a name in :data:`LOOKAHEAD_SCORES`),
4. restores the snapshot and returns the best candidate.

With ``horizon=None``, ``score="objective"`` and a ``rollout`` controller that is also a proposal, this is
the *rollout algorithm* of dynamic programming (one step of policy iteration on the rollout controller): the
env is deterministic given its snapshot, so every score is the exact objective of "this decision, then the
rollout controller", and the episode is never worse than the rollout controller's own: each rollout continues
from the memory of a *shadow* copy of the rollout controller that sees every real observation (a round counter, a
schedule's step, an EMA go on from where the real episode is; its random generator is copied too), so the rollout
controller's own decision scores exactly what following it from here would pay. Controllers without per-env
memory (SB3 models) are restarted for each rollout.

The simulated cost of planning is reported per episode (``episode_metrics()``): rounds simulated per
decision and the planning's share of the run time.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qflgym.agents.controllers.base import CONTROLLERS, Controller, controller_names, make_controller
from qflgym.config import ConfigError

__all__ = ["LOOKAHEAD_SCORES", "PRIVILEGED", "LookaheadController", "Rollout"]

#: Controllers that read simulator state a real controller cannot see; reports label them.
PRIVILEGED: set[str] = {"lookahead"}


@dataclass(frozen=True)
class Rollout:
    """What one candidate did over the horizon.

    Attributes:
        total_reward: Sum of the env's rewards.
        objective: The env's objective (``info["objective"]``) after the rollout.
        accuracy_gain: Validation accuracy after minus before.
        cost: Cost spent during the rollout (objective units).
        done: The episode ended during the rollout.
    """

    total_reward: float
    objective: float
    accuracy_gain: float
    cost: float
    done: bool


#: How a rollout is scored (higher is better): ``fn(rollout) -> float``.
LOOKAHEAD_SCORES: dict[str, Callable[[Rollout], float]] = {
    "reward": lambda r: r.total_reward,
    "objective": lambda r: -r.objective,
    "accuracy_per_cost": lambda r: r.accuracy_gain / max(r.cost, 1e-12),
}


class LookaheadController:
    """Plan every decision by trying candidates ``horizon`` rounds ahead on snapshots of ``env``.

    Args:
        env: The single (possibly wrapped) qflgym env it acts on; the planner steps this env's unwrapped
            copy and restores it, so evaluate it on that same env.
        seed: Seed of the candidate generator.
        candidates: Random candidates per decision (``>= 0``; with no proposals, ``>= 1``).
        horizon: Rounds simulated per candidate (``>= 1``), or ``None`` to simulate until the episode ends.
        rollout: After the first round: ``"repeat"`` the candidate, or a controller name (built on ``env``).
        rollout_kwargs: Keyword arguments of the rollout controller.
        score: A name in :data:`LOOKAHEAD_SCORES`.
        proposals: Controllers whose decisions are candidates too: names, or ``[name, kwargs]`` pairs.
        cohort_size: Random selection candidates train exactly this many available clients (``None``: a
            random size from 1 to the selection budget), for comparisons at an equal cohort size.
        resample: ``None``: rollouts replay the env's own future random draws (which clients are available or
            drawn by the env's selection rule, minibatches, shot outcomes), so the planner is *clairvoyant*.
            ``n >= 1``: each candidate is scored by the mean of ``n`` rollouts whose future draws are redrawn
            (the federation's generator and ``np_random`` reseeded from the planner's own generator; the same
            ``n`` seeds for every candidate of a decision), a planner that knows the simulator but not the
            future. The real episode keeps its own draws either way.

    Raises:
        ConfigError: Naming the field and the allowed values for a bad option.
    """

    def __init__(
        self,
        env: Any,
        *,
        seed: int | None = None,
        candidates: int = 16,
        horizon: int | None = 1,
        rollout: str = "repeat",
        rollout_kwargs: Mapping[str, Any] | None = None,
        score: str = "reward",
        proposals: Sequence[str | Sequence[Any]] = (),
        cohort_size: int | None = None,
        resample: int | None = None,
    ) -> None:
        if hasattr(env, "num_envs"):
            raise ConfigError("lookahead: env must be a single env (it plans on the env's own snapshots), got a VecEnv")
        self.env = env.unwrapped
        if not hasattr(self.env, "get_state"):
            raise ConfigError(f"lookahead: env must be a qflgym env with get_state/set_state, got {type(env).__name__}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 0:
            raise ConfigError(f"lookahead.candidates: must be an integer >= 0, got {candidates!r}")
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise ConfigError(f"lookahead.horizon: must be an integer >= 1 or null (until the end), got {horizon!r}")
        if score not in LOOKAHEAD_SCORES:
            raise ConfigError(f"lookahead.score: unknown score {score!r}; allowed: {', '.join(LOOKAHEAD_SCORES)}")
        names = controller_names()
        proposals = [_named(p) for p in proposals]
        for field, name in [("rollout", rollout)] * (rollout != "repeat") + [("proposals", n) for n, _ in proposals]:
            if name not in names or name == "lookahead":
                allowed = ", ".join(n for n in names if n != "lookahead")
                raise ConfigError(f"lookahead.{field}: unknown controller {name!r}; allowed: repeat, {allowed}")
        budget = getattr(self.env.action_codec, "k", None) or self.env.n_clients
        if cohort_size is not None and (
            isinstance(cohort_size, bool) or not isinstance(cohort_size, int) or not 1 <= cohort_size <= budget
        ):
            raise ConfigError(
                f"lookahead.cohort_size: must be an integer in [1, {budget}] (the selection budget, else N) or "
                f"null, got {cohort_size!r}"
            )
        self.cohort_size = cohort_size
        if resample is not None and (isinstance(resample, bool) or not isinstance(resample, int) or resample < 1):
            raise ConfigError(
                f"lookahead.resample: must be an integer >= 1 or null (replay the draws), got {resample!r}"
            )
        self.resample = resample
        if candidates == 0 and not proposals:
            raise ConfigError("lookahead.candidates: must be >= 1 when there are no proposals")
        self.n_candidates, self.horizon, self.score_name = candidates, horizon, score
        self._score = LOOKAHEAD_SCORES[score]
        self.rng = np.random.default_rng(seed)
        self._proposals = [make_controller(name, env, seed=seed, **kwargs) for name, kwargs in proposals]
        self._rollout = (
            None if rollout == "repeat" else make_controller(rollout, env, seed=seed, **dict(rollout_kwargs or {}))
        )
        self._shadow = (
            make_controller(rollout, env, seed=seed, **dict(rollout_kwargs or {}))
            if isinstance(self._rollout, Controller)
            else None
        )
        self._codec = self.env.action_codec
        self._space = self.env.action_space
        self._space.seed(int(self.rng.integers(2**31 - 1)))
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._decisions = 0
        self._rounds = 0
        self._plan_s = 0.0
        self._start = time.perf_counter()

    def reset(self, seed: int | None = None) -> None:
        """Forget the episode's counters and, when ``seed`` is given, reseed the candidate generator."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
            self._space.seed(int(self.rng.integers(2**31 - 1)))
        if self._shadow is not None:
            self._shadow.reset()
        self._reset_counters()

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[Any, Any]:
        """Return ``(best candidate action, state)`` for the env's current state (SB3's protocol)."""
        if episode_start is not None and bool(np.any(episode_start)):
            self._reset_counters()
        began = time.perf_counter()
        if self._shadow is not None:  # its memory follows the real episode; rollouts start from a copy
            self._shadow.predict(observation, episode_start=episode_start, deterministic=True)
        snapshot = self.env.get_state()
        futures = [None] if self.resample is None else self.rng.integers(2**62, size=self.resample).tolist()
        best, best_score = None, -math.inf
        for action in self._candidates(observation):
            scores = []
            for future in futures:
                if future is not None:
                    self._redraw_future(future)
                scores.append(self._score(self._simulate(action)))
                self.env.set_state(snapshot)
            value = float(np.mean(scores))
            if value > best_score:
                best, best_score = action, value
        self._decisions += 1
        self._plan_s += time.perf_counter() - began
        return best, state

    def _redraw_future(self, seed: int) -> None:
        """Reseed the env's run-time random streams (its snapshot restores the real ones afterwards)."""
        self.env.federation.generator.manual_seed(seed % 2**63)
        self.env.np_random = np.random.default_rng(seed)

    def _candidates(self, observation: Any) -> list[Any]:
        out = [proposal.predict(observation, deterministic=True)[0] for proposal in self._proposals]
        available = np.asarray(self.env.client_state.available, dtype=bool)
        for _ in range(self.n_candidates):
            out.append(self._random_candidate(available))
        if "termination" in self._codec.controls:
            decision = self._codec.decode(self._space.sample())
            out.append(self._codec.encode(type(decision)(decision.selected, decision.lr, decision.local_steps, True)))
        unique: dict[bytes, Any] = {}
        for action in out:
            unique.setdefault(np.asarray(action).tobytes(), action)
        return list(unique.values())

    def _random_candidate(self, available: np.ndarray) -> Any:
        decision = self._codec.decode(self._space.sample())
        selected = decision.selected
        if "selection" in self._codec.controls:
            ids = np.flatnonzero(available)
            budget = min(getattr(self._codec, "k", len(available)), len(ids))
            selected = np.zeros(len(available), dtype=bool)
            if budget:
                size = min(self.cohort_size, budget) if self.cohort_size else int(self.rng.integers(1, budget + 1))
                selected[self.rng.choice(ids, size=size, replace=False)] = True
        return self._codec.encode(type(decision)(selected, decision.lr, decision.local_steps, False))

    def _simulate(self, action: Any) -> Rollout:
        env = self.env
        acc0 = env.val_accuracy
        total_reward = cost = 0.0
        done = False
        info: dict[str, Any] = {}
        obs = None
        if self._shadow is not None:
            self._rollout.memory = copy.deepcopy(self._shadow.memory)
            self._rollout.rng = copy.deepcopy(self._shadow.rng)
        elif self._rollout is not None and hasattr(self._rollout, "reset"):
            self._rollout.reset()
        t = 0
        while self.horizon is None or t < self.horizon:
            if t > 0 and self._rollout is not None:
                action = self._rollout.predict(obs, deterministic=True)[0]
            t += 1
            obs, reward, terminated, truncated, info = env.step(action)
            self._rounds += 1
            total_reward += float(reward)
            cost += float(info["cost"])
            if terminated or truncated:
                done = True
                break
        return Rollout(total_reward, float(info["objective"]), float(info["val_accuracy"]) - acc0, cost, done)

    def episode_metrics(self) -> dict[str, float]:
        """Planning cost of the episode so far: rounds simulated per decision, share of the run time."""
        elapsed = max(time.perf_counter() - self._start, 1e-12)
        decisions = max(self._decisions, 1)
        return {
            "planned_rounds_per_decision": self._rounds / decisions,
            "planning_time_share": self._plan_s / elapsed,
        }


def _named(proposal: str | Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``[name, kwargs]`` -> ``(name, kwargs)``."""
    if isinstance(proposal, str):
        return proposal, {}
    if len(proposal) != 2 or not isinstance(proposal[0], str) or not isinstance(proposal[1], Mapping):
        raise ConfigError(f"lookahead.proposals: each entry must be a name or [name, kwargs], got {proposal!r}")
    return proposal[0], dict(proposal[1])


CONTROLLERS.add("lookahead", LookaheadController)
