"""Behaviour cloning: warm-start an SB3 actor-critic policy from a teacher controller's episodes.

Reinforcement learning from scratch on ``QFL/ClientSelection-v1`` did not find the informed heuristics' room
within a 10-minute budget (docs/results.md). A policy that starts from a good teacher's decisions and then
improves on them with PPO is the standard remedy (the SB3 docs' "pretraining" recipe, DQfD, AlphaGo's SL
policy). :func:`collect_demonstrations` runs a named controller of
:data:`~qflgym.agents.controllers.CONTROLLERS` (a heuristic, or the privileged ``lookahead`` oracle: distilling
a planner into a policy is legitimate, and the run record names the teacher) and records every
``(observation, action, discounted return-to-go)``; :func:`behaviour_clone` maximizes the policy's
log-likelihood of the teacher's actions (``policy.evaluate_actions``, so it works for every SB3 distribution)
and fits the critic to the returns, so PPO's first advantages are not noise.

Hand-written rather than the ``imitation`` library: its releases pin ``gymnasium~=0.29`` and older SB3, which
conflict with this stack, and BC is one loss.

Demonstration episodes use the reset seeds ``seed + DEMO_SEED_OFFSET + i``, disjoint from the training envs'
seeds, the periodic-evaluation seed and the benchmark evaluation seeds (10000..).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from qflgym.config import ConfigError, StrictModel

__all__ = [
    "DEMO_SEED_OFFSET",
    "CloneResult",
    "Demonstrations",
    "PretrainConfig",
    "PretrainResult",
    "behaviour_clone",
    "collect_demonstrations",
    "demonstration_seeds",
    "pretrain",
]

#: Demonstration episode ``i`` of a run seeded ``seed`` resets with seed ``seed + DEMO_SEED_OFFSET + i``.
DEMO_SEED_OFFSET = 20_000


class PretrainConfig(StrictModel):
    """Behaviour-cloning warm start of a training run (``qflgym train --pretrain-teacher ...``)."""

    teacher: str
    """A controller name (``qflgym list controllers``), e.g. ``cost-aware``."""
    teacher_kwargs: dict[str, Any] = Field(default_factory=dict)
    """The teacher's keyword arguments, e.g. ``{k: 3}``."""
    episodes: int = Field(40, ge=1)
    """Teacher episodes to record (each on a fresh federation)."""
    episode_steps: int | None = Field(None, ge=1)
    """Steps recorded per teacher episode (None: until it ends). Every reset draws a new federation, so many
    short episodes show the teacher more federations for the same number of steps; a cloned policy that has
    seen few federations picks clients the teacher never would on new ones. DAgger episodes always run to the
    end (they are where the cloned policy's own failures, e.g. a repeated cohort, get labelled). The critic is
    fit on complete episodes only (a cut episode has no return-to-go)."""
    epochs: int = Field(30, ge=1)
    """Passes over the demonstrations (the first fit)."""
    dagger_epochs: int | None = Field(None, ge=1)
    """Passes over all the demonstrations in each DAgger refit (None: ``epochs``). A refit starts from the
    previous fit's weights, and each round adds a fraction of new steps, so a few passes may suffice; the fits
    are most of a clone's time."""
    batch_size: int = Field(256, ge=1)
    """Minibatch size."""
    learning_rate: float = Field(1e-3, gt=0, allow_inf_nan=False)
    """Adam learning rate of the cloning phase."""
    loss: Literal["likelihood", "listwise"] = "likelihood"
    """What the actor fits. ``likelihood``: the negative log-likelihood of the teacher's action (every SB3
    distribution; for a Gaussian over client scores, a squared error towards the teacher's +-1 scores).
    ``listwise``: for a top-k action of client scores (``Box(N)``), each client the teacher picked against all
    it did not, ``-log(exp(s_i) / (exp(s_i) + sum_{j not picked} exp(s_j)))`` over the score means ``s``
    (ListNet/ListMLE-style): only the order of the scores counts, which is all a top-k action reads."""
    value_coef: float = Field(0.5, ge=0, allow_inf_nan=False)
    """Weight of the critic's return regression (0: leave the critic untrained)."""
    train_log_std: bool = False
    """Also fit a Gaussian policy's ``log_std`` (off: keep ``log_std_init``, so PPO still explores)."""
    dagger_iterations: int = Field(0, ge=0)
    """DAgger rounds after the first fit: the cloned policy drives ``dagger_episodes`` episodes, the teacher
    labels every state it visits, and the policy is refit on all the data (Ross et al., 2011). This repairs
    the states the teacher never visits, e.g. a cohort of nobody that a deterministic policy repeats forever."""
    dagger_episodes: int = Field(20, ge=1)
    """Episodes per DAgger round."""


@dataclass(frozen=True)
class Demonstrations:
    """A teacher's recorded steps.

    Attributes:
        observations: ``[T, D]``.
        actions: ``[T, ...]`` (the env's action shape).
        returns: ``[T]`` discounted return-to-go of each step within its episode (NaN in an episode cut at
            ``episode_steps``, which has none).
        objectives: ``[episodes]`` the episode objectives (the teacher's score; NaN for a cut episode).
        action_masks: ``[T, M]`` or None when the algorithm uses no masks.
    """

    observations: np.ndarray
    actions: np.ndarray
    returns: np.ndarray
    objectives: np.ndarray
    action_masks: np.ndarray | None = None

    def extend(self, other: Demonstrations) -> Demonstrations:
        """These steps followed by ``other``'s."""
        masks = None if self.action_masks is None else np.concatenate([self.action_masks, other.action_masks])
        return Demonstrations(
            observations=np.concatenate([self.observations, other.observations]),
            actions=np.concatenate([self.actions, other.actions]),
            returns=np.concatenate([self.returns, other.returns]),
            objectives=np.concatenate([self.objectives, other.objectives]),
            action_masks=masks,
        )


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` did.

    Attributes:
        steps: Demonstration steps the policy was fit on (teacher episodes and DAgger rounds).
        teacher_objective: The teacher's mean objective over its complete episodes (NaN if all were cut).
        dagger_objectives: The cloned policy's mean objective over each DAgger round's episodes (before the
            refit on them).
        clone: The last fit.
        seconds: Wall-clock seconds.
    """

    steps: int
    teacher_objective: float
    dagger_objectives: list[float]
    clone: CloneResult
    seconds: float


@dataclass(frozen=True)
class CloneResult:
    """What :func:`behaviour_clone` measured.

    Attributes:
        first_loss: Mean negative log-likelihood of the teacher's actions over the first epoch.
        last_loss: The same over the last epoch.
        agreement: Share of demonstration steps on which the cloned policy's deterministic action equals the
            teacher's.
    """

    first_loss: float
    last_loss: float
    agreement: float


def _discounted(rewards: list[float], gamma: float) -> list[float]:
    out, acc = [], 0.0
    for r in reversed(rewards):
        acc = r + gamma * acc
        out.append(acc)
    return out[::-1]


def collect_demonstrations(
    env: Any,
    cfg: PretrainConfig,
    seeds: list[int],
    gamma: float,
    action_masks: bool = False,
    actor: Any = None,
    max_steps: int | None = None,
    on_episode: Callable[[], None] | None = None,
) -> Demonstrations:
    """Record the teacher's action in every state of one episode per reset seed.

    Args:
        env: A qflgym env (from ``gym.make``) with the training run's config.
        cfg: The teacher.
        seeds: The episodes' reset seeds.
        gamma: Discount of the returns-to-go (the algorithm's ``gamma``).
        action_masks: Record the env's action masks (for MaskablePPO).
        actor: Who acts (``predict`` protocol, deterministic); default the teacher. With another actor the
            teacher only labels the states the actor visits (DAgger), and the returns are the actor's.
        max_steps: Cut each episode after this many steps (None: run it to the end).
        on_episode: Called after each episode (progress display).
    """
    from qflgym.agents.controllers import make_controller
    from qflgym.agents.controllers.base import get_action_masks

    teacher = make_controller(cfg.teacher, env, seed=seeds[0] if seeds else 0, **cfg.teacher_kwargs)
    obs_rows, act_rows, mask_rows, returns, objectives = [], [], [], [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        rewards: list[float] = []
        start = np.ones(1, dtype=bool)
        while True:
            mask = get_action_masks(env) if action_masks else None
            if mask is not None:
                mask_rows.append(mask)
            label, _ = teacher.predict(obs, episode_start=start, deterministic=True)
            action = label
            if actor is not None:
                kwargs = {} if mask is None else {"action_masks": mask}
                action, _ = actor.predict(obs, episode_start=start, deterministic=True, **kwargs)
            start = np.zeros(1, dtype=bool)
            obs_rows.append(np.asarray(obs, dtype=np.float32))
            act_rows.append(np.asarray(label))
            obs, reward, terminated, truncated, info = env.step(action)
            rewards.append(float(reward))
            if terminated or truncated:
                objectives.append(float(info.get("objective", np.nan)))
                returns.extend(_discounted(rewards, gamma))
                break
            if max_steps is not None and len(rewards) >= max_steps:
                objectives.append(np.nan)
                returns.extend([np.nan] * len(rewards))
                break
        if on_episode is not None:
            on_episode()
    return Demonstrations(
        observations=np.stack(obs_rows),
        actions=np.stack(act_rows),
        returns=np.asarray(returns, dtype=np.float32),
        objectives=np.asarray(objectives),
        action_masks=np.stack(mask_rows) if action_masks else None,
    )


def behaviour_clone(
    policy: Any, demos: Demonstrations, cfg: PretrainConfig, seed: int, epochs: int | None = None
) -> CloneResult:
    """Fit ``policy`` (an SB3 ``ActorCriticPolicy``) to the teacher's actions and returns.

    Loss per minibatch: ``-mean log pi(a_teacher | s) + value_coef * mean (V(s) - G)^2`` (the value term over
    the steps with a return, see :attr:`PretrainConfig.episode_steps`), Adam with ``cfg.learning_rate`` over
    ``epochs`` shuffled passes (order from ``seed``). With ``cfg.loss == "listwise"`` the actor term is the
    listwise loss of :attr:`PretrainConfig.loss` instead (reported in ``first_loss``/``last_loss``).

    Args:
        policy: The model's policy (``model.policy``), trained in place.
        demos: From :func:`collect_demonstrations`.
        cfg: The cloning settings.
        seed: Seed of the minibatch order.
        epochs: Passes over the demonstrations (None: ``cfg.epochs``).

    Raises:
        ConfigError: ``loss: listwise`` for a policy whose action is not a Gaussian over client scores.
    """
    listwise = cfg.loss == "listwise"
    if listwise:
        _check_listwise(policy)
    device = policy.device
    obs = torch.as_tensor(demos.observations, device=device)
    actions = torch.as_tensor(demos.actions, device=device)
    returns = torch.as_tensor(demos.returns, device=device)
    masks = None if demos.action_masks is None else torch.as_tensor(demos.action_masks, device=device)
    log_std = getattr(policy, "log_std", None)
    params = [p for p in policy.parameters() if cfg.train_log_std or p is not log_std]
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(seed)
    n = obs.shape[0]
    epoch_losses = []
    policy.set_training_mode(True)
    for _ in range(cfg.epochs if epochs is None else epochs):
        order = torch.randperm(n, generator=generator).to(device)
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if listwise:
                values, nll = _listwise_loss(policy, obs[idx], actions[idx])
            else:
                extra = {} if masks is None else {"action_masks": masks[idx]}
                values, log_prob, _ = policy.evaluate_actions(obs[idx], actions[idx], **extra)
                nll = -log_prob.mean()
            target = returns[idx]
            known = ~torch.isnan(target)
            value_loss = torch.mean((values.flatten()[known] - target[known]) ** 2) if known.any() else 0.0
            loss = nll + cfg.value_coef * value_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(nll.detach()) * len(idx)
        epoch_losses.append(total / n)
    policy.set_training_mode(False)
    return CloneResult(epoch_losses[0], epoch_losses[-1], _agreement(policy, demos))


def _check_listwise(policy: Any) -> None:
    from stable_baselines3.common.distributions import DiagGaussianDistribution

    space = policy.action_space
    if not (isinstance(policy.action_dist, DiagGaussianDistribution) and len(space.shape) == 1):
        raise ConfigError(
            f"pretrain: loss=listwise needs a top-k action of client scores (a Box(N) with a Gaussian policy), "
            f"not {space} with {type(policy.action_dist).__name__}; allowed: loss=likelihood"
        )


def _listwise_loss(policy: Any, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [B, 1], loss)``: each teacher-picked score (``action > 0``) against all the unpicked ones.

    The score means and values come from one pass, as in SB3's ``ActorCriticPolicy.evaluate_actions``; rows in
    which the teacher picked nobody add nothing.
    """
    features = policy.extract_features(obs)
    if policy.share_features_extractor:
        latent_pi, latent_vf = policy.mlp_extractor(features)
    else:
        latent_pi = policy.mlp_extractor.forward_actor(features[0])
        latent_vf = policy.mlp_extractor.forward_critic(features[1])
    scores = policy.action_net(latent_pi)
    picked = actions > 0
    unpicked = torch.logsumexp(scores.masked_fill(picked, float("-inf")), dim=-1, keepdim=True)
    per_pick = torch.logaddexp(scores, unpicked) - scores
    loss = per_pick[picked].sum() / picked.sum().clamp(min=1)
    return policy.value_net(latent_vf), loss


def demonstration_seeds(cfg: PretrainConfig, seed: int) -> range:
    """The reset seeds of a run's demonstration episodes: the teacher's, then each DAgger round's, in order."""
    first = seed + DEMO_SEED_OFFSET
    return range(first, first + cfg.episodes + cfg.dagger_iterations * cfg.dagger_episodes)


def pretrain(
    model: Any, env: Any, cfg: PretrainConfig, seed: int, action_masks: bool = False, progress: bool = False
) -> PretrainResult:
    """Warm-start ``model`` (an SB3 on-policy algorithm) by behaviour cloning, then DAgger rounds.

    See :class:`PretrainConfig`. The episodes reset with :func:`demonstration_seeds` in order.

    Args:
        model: The algorithm whose ``policy`` is fit in place (its ``gamma`` discounts the returns).
        env: A qflgym env with the run's config.
        cfg: The teacher and the cloning settings.
        seed: The training run's seed.
        action_masks: Record and apply the env's action masks (MaskablePPO).
        progress: Show a progress bar of the episodes and fits.
    """
    from rich.progress import Progress

    start = time.perf_counter()
    gamma = float(getattr(model, "gamma", 0.99))
    seeds = demonstration_seeds(cfg, seed)
    with Progress(disable=not progress) as bar:
        episode_task = bar.add_task("pretrain: episodes", total=len(seeds))
        fit_task = bar.add_task("pretrain: fits", total=1 + cfg.dagger_iterations)

        def collect(lo: int, n: int, **kwargs: Any) -> Demonstrations:
            """Episodes on ``seeds[lo : lo + n]``, advancing the progress bar."""
            some = list(seeds[lo : lo + n])
            return collect_demonstrations(
                env, cfg, some, gamma, action_masks, on_episode=lambda: bar.advance(episode_task), **kwargs
            )

        demos = collect(0, cfg.episodes, max_steps=cfg.episode_steps)
        complete = demos.objectives[~np.isnan(demos.objectives)]
        teacher_objective = float(np.mean(complete)) if complete.size else float("nan")
        clone = behaviour_clone(model.policy, demos, cfg, seed)
        bar.advance(fit_task)
        dagger_objectives = []
        for r in range(cfg.dagger_iterations):
            visited = collect(cfg.episodes + r * cfg.dagger_episodes, cfg.dagger_episodes, actor=model)
            dagger_objectives.append(float(np.mean(visited.objectives)))
            demos = demos.extend(visited)
            clone = behaviour_clone(model.policy, demos, cfg, seed + r + 1, epochs=cfg.dagger_epochs)
            bar.advance(fit_task)
    return PretrainResult(len(demos.returns), teacher_objective, dagger_objectives, clone, time.perf_counter() - start)


def _agreement(policy: Any, demos: Demonstrations) -> float:
    """Share of steps whose deterministic policy action equals the teacher's (scores: by sign)."""
    kwargs = {} if demos.action_masks is None else {"action_masks": demos.action_masks}
    predicted, _ = policy.predict(demos.observations, deterministic=True, **kwargs)
    teacher = demos.actions
    if np.issubdtype(teacher.dtype, np.floating):
        predicted, teacher = np.sign(predicted), np.sign(teacher)
    same = (predicted.reshape(len(teacher), -1) == teacher.reshape(len(teacher), -1)).all(axis=1)
    return float(same.mean())
