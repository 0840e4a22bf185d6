"""GRPO for the per-client ranker (``qflgym llm grpo`` from a ``head: rank`` policy).

TRL's ``GRPOTrainer`` optimizes generated completions through their token log-probabilities; the ranker generates
no tokens, so this is a plain PyTorch loop with GRPO's objective on the ranker's own action distribution:

* A cohort is a Plackett-Luce sample: the top-k available rows of ``score / temperature`` plus Gumbel noise
  (:meth:`~qflgym.agents.llm.ranker.LLMRanker.cohort_order`), i.e. ``k`` rows drawn without replacement from
  ``softmax(score / temperature)`` over the available rows. Its log-probability (:func:`plackett_luce_logprob`) is
  ``sum_j [s_(c_j) - logsumexp(s over the rows not drawn before j)]`` in the sampled order; the reward depends on
  the set only, so this is an unbiased REINFORCE estimator of the set's gradient.
* Each step takes ``prompts_per_step`` bank states; one forward pass (adapter in training mode) scores each, and
  ``num_generations`` cohorts are sampled from those scores. A cohort's reward is the env's (the same
  :func:`~qflgym.agents.llm.train.grpo_trainer.get_env_reward` as the generating policy: restore the state, act,
  ``horizon`` rounds), times ``env_reward_weight``; advantages are normalized within the group,
  ``(R - mean) / (std + 1e-4)``, as TRL's ``scale_rewards="group"``.
* Loss: ``-mean(A * log pi)`` (one on-policy update per batch, TRL's default ``num_iterations=1``, where the
  clipped ratio is 1) plus ``beta`` times TRL's ``k3`` estimate of the KL to the reference (the adapter disabled).
  AdamW with a linear decay, gradients clipped to norm 1 (TRL's defaults). A cohort is always valid, so there is no
  format term.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from qflgym.agents.llm.ranker import LLMRanker, encode_rows, row_scores
from qflgym.envs.actions import ControlDecision

if TYPE_CHECKING:
    from qflgym.agents.llm.train.grpo_config import LLMGRPOConfig
    from qflgym.agents.llm.train.grpo_trainer import StateBank

__all__ = ["RankGRPOLog", "fit_rank_grpo", "group_advantages", "plackett_luce_logprob"]


def plackett_luce_logprob(scores: torch.Tensor, order: Sequence[int], temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of drawing the rows ``order`` in that order without replacement from ``softmax(s / T)``.

    Args:
        scores: ``[N]`` scores of the rows that could be drawn (unavailable rows left out by the caller).
        order: Indices into ``scores``, distinct, in drawing order.
        temperature: The sampling temperature.

    Returns:
        A scalar tensor (with the gradient of ``scores``).
    """
    s = scores / temperature
    taken = torch.zeros(len(s), dtype=torch.bool, device=s.device)
    total = s.new_zeros(())
    for i in order:
        total = total + s[i] - torch.logsumexp(s.masked_fill(taken, float("-inf")), 0)
        taken = taken.clone()  # masked_fill keeps the mask for its backward
        taken[i] = True
    return total


def group_advantages(rewards: Sequence[float]) -> np.ndarray:
    """GRPO's group-normalized advantages ``(R - mean) / (std + 1e-4)`` (TRL's ``scale_rewards="group"``)."""
    r = np.asarray(rewards, dtype=np.float64)
    return (r - r.mean()) / (r.std(ddof=1) + 1e-4) if len(r) > 1 else np.zeros_like(r)


@dataclass
class RankGRPOLog:
    """What :func:`fit_rank_grpo` measured.

    Attributes:
        rewards: Mean sampled reward per logging step.
        step_times: Wall seconds of every optimizer step.
        history: One dict per logging step (``step``, ``reward``, ``reward_std``, ``loss``, ``kl``, ``grad_norm``).
    """

    rewards: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


def fit_rank_grpo(
    ranker: LLMRanker, bank: StateBank, env_reward: Callable[..., list[float]], config: LLMGRPOConfig
) -> RankGRPOLog:
    """Train ``ranker.model`` (its trainable adapter) with GRPO on the bank's states (see the module docstring).

    Args:
        ranker: The ranker (its generator draws the cohorts, at its temperature).
        bank: The prompt states (shuffled with ``config.seed``, then taken in turn).
        env_reward: ``env_reward(prompts, completions, state_id) -> rewards`` (completions are canonical texts).
        config: The run's ``max_steps``, ``prompts_per_step``, ``num_generations`` (the group),
            ``env_reward_weight``, ``learning_rate`` (AdamW, linear decay to 0), ``beta``, ``seed``, ``logging_steps``
            and ``progress``.

    Returns:
        The run's log; the model is left in eval mode.
    """
    from peft import PeftModel
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    model, codec = ranker.model, ranker.codec
    if config.beta > 0 and not isinstance(model, PeftModel):
        raise TypeError("beta > 0 needs a PEFT model (the reference is the model with its adapter disabled)")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, config.max_steps)
    order = np.random.default_rng(config.seed).permutation(len(bank))
    log, window = RankGRPOLog(), []
    bar = tqdm(total=config.max_steps, desc="rank grpo", unit="step", disable=not config.progress, dynamic_ncols=True)
    model.train()
    per_step, group = config.prompts_per_step, config.num_generations
    for step in range(config.max_steps):
        start = time.perf_counter()
        ids = [int(order[(step * per_step + j) % len(order)]) for j in range(per_step)]
        observations = [bank.observations[i] for i in ids]
        enc = encode_rows(ranker.tokenizer, codec, codec.prompts(np.stack(observations)))
        scores = row_scores(model, **enc, direction=ranker.direction)
        reference = None
        if config.beta > 0:
            with torch.no_grad(), model.disable_adapter():
                reference = row_scores(model, **enc, direction=ranker.direction)
        terms, kls, sampled = [], [], []
        for b, (sid, obs) in enumerate(zip(ids, observations, strict=True)):
            available = codec.available(obs)
            rows = np.flatnonzero(available)
            cohorts = [ranker.cohort_order(scores[b].detach(), available, False) for _ in range(group)]
            masks = [np.isin(np.arange(len(available)), c) for c in cohorts]
            texts = [codec.render(ControlDecision(selected=m)) for m in masks]
            rewards = [config.env_reward_weight * r for r in env_reward(None, texts, [sid] * group)]
            sampled.extend(rewards)
            advantages = group_advantages(rewards)
            local = {int(r): j for j, r in enumerate(rows)}
            for cohort, advantage in zip(cohorts, advantages, strict=True):
                picks = [local[i] for i in cohort if i in local]
                logp = plackett_luce_logprob(scores[b, rows], picks, ranker.temperature)
                term = -float(advantage) * logp
                if reference is not None:
                    ref_logp = plackett_luce_logprob(reference[b, rows], picks, ranker.temperature)
                    kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
                    term = term + config.beta * kl
                    kls.append(float(kl))
                terms.append(term)
        loss = torch.stack(terms).mean()
        optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optimizer.step()
        schedule.step()
        log.step_times.append(time.perf_counter() - start)
        kl = float(np.mean(kls)) if kls else 0.0
        window.append((float(np.mean(sampled)), float(np.std(sampled)), float(loss.detach()), kl, grad_norm))
        if (step + 1) % config.logging_steps == 0 or step + 1 == config.max_steps:
            reward, reward_std, mean_loss, kl, norm = (float(np.mean(col)) for col in zip(*window, strict=True))
            log.rewards.append(reward)
            log.history.append(
                {
                    "step": step + 1,
                    "reward": reward,
                    "reward_std": reward_std,
                    "loss": mean_loss,
                    "kl": kl,
                    "grad_norm": norm,
                }
            )
            bar.set_postfix(reward=f"{reward:.3f}")
            window = []
        bar.update(1)
    bar.close()
    model.eval()
    return log
