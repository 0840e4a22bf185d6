"""RL fine-tuning of the LLM policy in the env loop with TRL's ``GRPOTrainer``.

Prompts are env states: ``state_policy`` (a controller, an SB3 model, or the policy itself) plays ``episodes``
episodes and every state before a decision is kept (``env.unwrapped.get_state()``) with its observation. For each
prompt GRPO samples ``num_generations`` completions; :func:`get_env_reward` restores the prompt's state, parses the
completion into an action (fallbacks for invalid output, as at evaluation), steps the env and returns the env's
reward — summed over ``horizon`` rounds, the later ones acted by ``rollout_policy`` — and :func:`get_format_reward`
adds ``-1`` for an invalid completion (weights from the config). GRPO normalizes rewards within each group, so only
the *differences* between the sampled actions for the same state drive learning.

Generation uses the policy's grammar-constrained sampler through TRL's ``rollout_func`` hook (``constrained=True``):
it scores only grammar-legal tokens (a few dozen rows of the LM head instead of Gemma's 262k) and never produces
unparseable text, which is how the policy decodes at evaluation too. TRL's ``environment_factory`` targets
multi-turn tool-calling conversations; a QFL decision is one completion per state, so the reward function is where
the env fits (agents/llm/README.md, "GRPO with TRL directly", gives the reasons and a plain-TRL example). The run
directory holds the run record (``config.yaml``, ``command.txt``, ``run.json``), ``states.jsonl`` (prompt,
episode, step), ``policy/`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qflgym.agents.llm.adapters import ADAPTERS, resolve_adapter, write_adapter_meta
from qflgym.agents.llm.codec import CodecConfig, TextCodec
from qflgym.agents.llm.models import load_model
from qflgym.agents.llm.policy import POLICY_META, LLMPolicy, save_policy
from qflgym.agents.llm.ranker import LLMRanker
from qflgym.agents.llm.text_policy import TextPolicy
from qflgym.agents.llm.train.cli_args import prepare_run_dir
from qflgym.agents.llm.train.grpo_config import LLMGRPOConfig
from qflgym.agents.llm.train.rollout import make_teacher, rollout, teacher_options
from qflgym.agents.llm.train.sft_config import HEADS
from qflgym.agents.llm.train.trl_hooks import compact_lm_head, seconds_per_step, step_timer
from qflgym.agents.runtime import make_env
from qflgym.config import ConfigError

# ``rollout_func`` is marked experimental in TRL 1.x; we rely on it knowingly (see the module docstring).
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

__all__ = [
    "GRPOResult",
    "LLMGRPOTrainer",
    "StateBank",
    "get_constrained_rollout",
    "get_env_reward",
    "get_format_reward",
]


@dataclass
class StateBank:
    """Env snapshots and observations that GRPO prompts refer to by index (``state_id``).

    Attributes:
        states: ``env.unwrapped.get_state()`` snapshots.
        observations: The observation at each snapshot.
        steps: Decisions already taken in the episode at each snapshot (caps the reward horizon).
    """

    states: list[Any] = field(default_factory=list)
    observations: list[np.ndarray] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def add(self, state: Any, observation: np.ndarray, step: int) -> int:
        """Store one snapshot; return its ``state_id``."""
        self.states.append(state)
        self.observations.append(np.asarray(observation).copy())
        self.steps.append(int(step))
        return len(self.states) - 1

    def __len__(self) -> int:
        return len(self.states)


def get_env_reward(
    env: Any,
    codec: TextCodec,
    bank: StateBank,
    *,
    horizon: int = 1,
    gamma: float = 1.0,
    rollout_policy: Any = "repeat",
    max_episode_steps: int | None = None,
) -> Callable[..., list[float]]:
    """Build the env reward: restore the prompt's state, act the parsed completion, return the env's reward.

    Args:
        env: An env of the same id and config as the one the states came from (its ``unwrapped`` is stepped).
        codec: The text codec (parses completions; fallbacks apply to invalid output).
        bank: The snapshots; prompts carry a ``state_id`` column indexing it.
        horizon: Rounds whose (discounted) rewards are summed; rounds 2.. are acted by ``rollout_policy``.
        gamma: Discount of later rounds.
        rollout_policy: ``"repeat"`` (the same decision again) or anything with ``predict``.
        max_episode_steps: The env's time limit (the horizon never runs past it).

    Returns:
        ``env_reward(prompts, completions, state_id, **kwargs) -> list[float]``.
    """
    unwrapped = env.unwrapped

    def env_reward(
        prompts: Sequence[Any], completions: Sequence[Any], state_id: Sequence[int], **kwargs: Any
    ) -> list[float]:
        del prompts, kwargs
        rewards = []
        for completion, sid in zip(completions, state_id, strict=True):
            sid = int(sid)
            unwrapped.set_state(bank.states[sid])
            obs = bank.observations[sid]
            text = completion if isinstance(completion, str) else str(completion)
            action = codec.action_codec.encode(codec.parse(text, obs, count=False).decision)
            total, discount = 0.0, 1.0
            steps_left = horizon
            if max_episode_steps is not None:
                steps_left = max(1, min(horizon, max_episode_steps - bank.steps[sid]))
            for h in range(steps_left):
                obs, reward, terminated, _, _ = unwrapped.step(action)
                total += discount * float(reward)
                discount *= gamma
                if terminated or h + 1 == steps_left:
                    break
                if rollout_policy != "repeat":
                    action, _ = rollout_policy.predict(obs, deterministic=True)
            rewards.append(total)
        return rewards

    return env_reward


def get_format_reward(codec: TextCodec, bank: StateBank | None = None) -> Callable[..., list[float]]:
    """Build the format term: ``0`` for a valid completion, ``-1`` for an invalid one (per the parser).

    Args:
        codec: The text codec.
        bank: The snapshots, to check completions against their prompt's observation (availability); without
            it every client counts as available.

    Returns:
        ``format_reward(prompts, completions, **kwargs) -> list[float]``.
    """

    def format_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        del prompts
        state_ids = kwargs.get("state_id")
        out = []
        for i, completion in enumerate(completions):
            text = completion if isinstance(completion, str) else str(completion)
            obs = bank.observations[int(state_ids[i])] if bank is not None and state_ids is not None else None
            out.append(0.0 if codec.parse(text, obs, count=False).valid else -1.0)
        return out

    return format_reward


def get_constrained_rollout(policy: LLMPolicy) -> Callable[[list[str], Any], dict[str, Any]]:
    """TRL ``rollout_func`` sampling each prompt's completion with the policy's grammar-constrained decoder.

    Returns completions with EOS appended when the grammar finished (as free generation would end them), so the
    policy is trained to stop where it stops at evaluation.
    """
    tokenizer = policy.tokenizer
    eos = tokenizer.eos_token_id

    def rollout_func(prompts: list[str], trainer: Any) -> dict[str, Any]:
        model = policy.model
        was_training = model.training
        model.eval()
        try:
            ids, finished = policy.generate_ids(prompts, deterministic=False)
        finally:
            if was_training:
                model.train()
        prompt_ids = [tokenizer(p).input_ids for p in prompts]
        completion_ids = [[*t, eos] if done else t for t, done in zip(ids, finished, strict=True)]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout_func


@dataclass
class GRPOResult:
    """What a GRPO run produced.

    Attributes:
        run_dir: The run directory.
        policy_dir: The saved policy.
        rewards: Mean reward per logging step.
        s_per_step: Mean seconds per optimizer step.
        n_states: Prompt states collected.
        evaluation: Evaluation summaries (``eval_episodes > 0``).
    """

    run_dir: Path
    policy_dir: Path
    rewards: list[float] = field(default_factory=list)
    s_per_step: float = math.nan
    n_states: int = 0
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)


class LLMGRPOTrainer:
    """GRPO fine-tuning of an LLM policy with env rewards (see the module docstring).

    Args:
        config: The run's configuration.
        argv: Command line recorded in the run directory.
    """

    def __init__(self, config: LLMGRPOConfig, argv: list[str] | None = None) -> None:
        self.config = config
        self.argv = argv
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- building
    def build_model(self) -> tuple[Any, Any, CodecConfig, str, str]:
        """The trainable (adapted) model, tokenizer, codec options, base model name and adapter name."""
        cfg = self.config
        if cfg.init_policy:
            meta_path = Path(cfg.init_policy) / POLICY_META
            if not meta_path.is_file():
                raise FileNotFoundError(f"{cfg.init_policy} is not a saved LLM policy (no {POLICY_META})")
            meta = json.loads(meta_path.read_text())
            head = meta.get("head", "completion")
            if head not in HEADS:
                raise ConfigError(
                    f"init_policy: GRPO trains heads {', '.join(HEADS)}; {cfg.init_policy} has head {head!r}"
                )
            if head == "rank" and (cfg.max_completion_length is not None or not cfg.constrained):
                raise ConfigError(
                    f"init_policy {cfg.init_policy} is a ranker (head 'rank'), which generates no text: drop "
                    "max_completion_length and constrained=false"
                )
            self.meta = meta
            adapter = ADAPTERS.get(meta["adapter"])
            model, tokenizer = load_model(
                meta["model"],
                seed=int(meta.get("model_seed", 0)),
                dtype=cfg.torch_dtype(),
                progress=cfg.progress,
                **adapter.base_model_kwargs(),
            )
            model = adapter.load(model, Path(cfg.init_policy) / "adapter", trainable=True)
            return model, tokenizer, CodecConfig(**meta.get("codec", {})), meta["model"], adapter.name
        adapter = resolve_adapter(cfg.adapter)
        model, tokenizer = cfg.fresh_model(adapter)
        return model, tokenizer, cfg.codec_config(), cfg.model, adapter.name

    def make_policy(self, model: Any, tokenizer: Any, codec: TextCodec) -> TextPolicy:
        """The policy being trained: the ranker for a ``head: rank`` init policy, else the constrained generator."""
        cfg = self.config
        if self.meta.get("head") == "rank":
            return LLMRanker(model, tokenizer, codec, temperature=cfg.temperature, seed=cfg.seed)
        return LLMPolicy(
            model,
            tokenizer,
            codec,
            constrained=True,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_completion_length,
            seed=cfg.seed,
        )

    def collect_states(self, env: Any, codec: TextCodec, policy: TextPolicy) -> tuple[StateBank, list[dict[str, Any]]]:
        """Play ``episodes`` episodes with ``state_policy`` and keep every pre-decision state as a prompt."""
        cfg = self.config
        actor = (
            policy
            if cfg.state_policy == "self"
            else make_teacher(cfg.state_policy, env, seed=cfg.seed, kwargs=cfg.state_policy_kwargs)
        )
        data = rollout(
            env,
            actor,
            codec,
            cfg.episodes,
            cfg.seed,
            keep_states=True,
            deterministic=cfg.state_deterministic,
            progress=cfg.progress,
            description="states",
        )
        bank = StateBank()
        rows = []
        for state, obs, record in zip(data.states, data.observations, data.records, strict=True):
            sid = bank.add(state, obs, record["step"])
            rows.append(
                {"prompt": codec.prompt(obs), "state_id": sid, "episode": record["episode"], "step": record["step"]}
            )
        return bank, rows

    # ---------------------------------------------------------------------------------------------- train
    def train(self) -> GRPOResult:
        """Collect states, run GRPO, save the policy (and evaluate when configured)."""
        from datasets import Dataset
        from trl import GRPOTrainer

        cfg = self.config
        torch.set_num_threads(cfg.torch_threads or os.cpu_count() or 1)
        torch.manual_seed(cfg.seed)
        run_dir = prepare_run_dir(cfg.out, "grpo", cfg, cfg.run_name, self.argv)
        model, tokenizer, codec_config, model_name, adapter_name = self.build_model()
        env = make_env(cfg.env_id, cfg.env_config)
        reward_env = make_env(cfg.env_id, cfg.env_config)
        try:
            codec = TextCodec.from_env(env, codec_config)
            policy = self.make_policy(model, tokenizer, codec)
            bank, rows = self.collect_states(env, codec, policy)
            with (run_dir / "states.jsonl").open("w") as fh:
                for r in rows:
                    fh.write(json.dumps(r) + "\n")
            reward_env.reset(seed=cfg.seed)
            rollout_policy: Any = "repeat"
            if cfg.rollout_policy != "repeat":
                rollout_policy = make_teacher(
                    cfg.rollout_policy, reward_env, seed=cfg.seed, kwargs=cfg.rollout_policy_kwargs
                )
            spec = getattr(env, "spec", None)
            env_reward = get_env_reward(
                reward_env,
                codec,
                bank,
                horizon=cfg.horizon,
                gamma=cfg.gamma,
                rollout_policy=rollout_policy,
                max_episode_steps=getattr(spec, "max_episode_steps", None),
            )
            start = time.perf_counter()
            if isinstance(policy, LLMRanker):
                from qflgym.agents.llm.train.rank_grpo import fit_rank_grpo

                log = fit_rank_grpo(policy, bank, env_reward, cfg)
                step_times, rewards, log_history = log.step_times, log.rewards, log.history
            else:
                model.train()
                timer = step_timer()
                trainer = GRPOTrainer(
                    model=model,
                    callbacks=[timer],
                    reward_funcs=[env_reward, get_format_reward(codec, bank)],
                    args=cfg.to_trl(str(run_dir / "trainer"), policy.max_new_tokens),
                    train_dataset=Dataset.from_list(rows),
                    processing_class=tokenizer,
                    rollout_func=get_constrained_rollout(policy) if cfg.constrained else None,
                )
                with compact_lm_head():
                    trainer.train()
                step_times, log_history = timer.times, trainer.state.log_history
                rewards = [float(e["reward"]) for e in log_history if "reward" in e]
            elapsed = time.perf_counter() - start
            steps = len(step_times)
            model.eval()
            policy_dir = save_policy(
                run_dir / "policy",
                model,
                model_name=model_name,
                adapter_name=adapter_name,
                codec_config=codec_config,
                extra={
                    "env_id": cfg.env_id,
                    "env_config": cfg.env_config,
                    "trainer": "grpo",
                    "head": self.meta.get("head", "completion"),
                    "init_policy": cfg.init_policy,
                    "teacher": self.meta.get("teacher"),
                    "teacher_kwargs": self.meta.get("teacher_kwargs", {}),
                    "teacher_deterministic": self.meta.get("teacher_deterministic", True),
                    "model_seed": int(self.meta.get("model_seed", cfg.model_seed)),
                    "dtype": cfg.dtype,
                },
            )
            if cfg.init_policy and (Path(cfg.init_policy) / "qflgym_adapter.json").is_file():
                shutil.copy(Path(cfg.init_policy) / "qflgym_adapter.json", policy_dir / "qflgym_adapter.json")
            elif not cfg.init_policy:
                write_adapter_meta(policy_dir, cfg.adapter_config(), adapter_name)
        finally:
            env.close()
            reward_env.close()
        result = GRPOResult(
            run_dir=run_dir,
            policy_dir=policy_dir,
            rewards=rewards,
            s_per_step=seconds_per_step(step_times),
            n_states=len(bank),
        )
        if cfg.eval_episodes > 0:
            from qflgym.agents.llm.train.sft_trainer import evaluate_against_teacher

            teacher = cfg.teacher or self.meta.get("teacher") or cfg.state_policy
            if teacher == "self":
                teacher = "random-k"
            teacher_kwargs, teacher_deterministic = teacher_options(self.meta, teacher)
            kind = LLMRanker if isinstance(policy, LLMRanker) else LLMPolicy
            eval_policy = kind(model, tokenizer, codec, seed=cfg.seed)
            result.evaluation = evaluate_against_teacher(
                cfg.env_id,
                cfg.env_config,
                eval_policy,
                teacher,
                teacher_kwargs,
                cfg.eval_episodes,
                cfg.eval_seed,
                teacher_deterministic=teacher_deterministic,
            )
        (run_dir / "metrics.json").write_text(
            json.dumps(
                {
                    "rewards": rewards,
                    "s_per_step": result.s_per_step,
                    "step_times": step_times,
                    "steps": steps,
                    "train_seconds": elapsed,
                    "n_states": result.n_states,
                    "evaluation": result.evaluation,
                    "log_history": log_history,
                },
                indent=2,
                default=str,
            )
        )
        return result
