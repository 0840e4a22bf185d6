"""Distil a controller into the LLM policy: teacher rollouts → (prompt, completion) pairs → TRL ``SFTTrainer``.

:class:`LLMSFTTrainer` runs the teacher (any registered controller, or a trained SB3 model given by path) for
``episodes`` episodes, renders every decision with the env's :class:`~qflgym.agents.llm.codec.TextCodec`
(``prompt`` = the observation, ``completion`` = the canonical text of the teacher's action), attaches the chosen
adapter (:data:`~qflgym.agents.llm.adapters.ADAPTERS`) to the base model and fine-tunes it with TRL's
``SFTTrainer`` (completion-only loss). With ``head: rank`` it fits the per-client ranker instead
(:mod:`qflgym.agents.llm.ranker`, :class:`~qflgym.agents.llm.train.rank_fit.RankTrainer`) on the teacher's
cohorts. With ``dagger_iterations`` > 0, DAgger (Ross et al., 2011) follows the first fit: each round the policy
(greedy) drives ``dagger_episodes`` episodes, the teacher labels every state it visits, and the policy is refit
on all the pairs for ``dagger_steps`` steps. The run directory holds::

    config.yaml  command.txt  run.json          the resolved config, the command line, package versions
    data.jsonl                                  the recorded pairs (``dagger``: 0 the teacher's, r DAgger round r's)
    policy/                                     adapter/ + qflgym_llm.json (load with ``qflgym llm eval``)
    metrics.json                                losses, seconds per step, teacher return, DAgger rounds, evaluation
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qflgym.agents.llm.adapters import resolve_adapter, write_adapter_meta
from qflgym.agents.llm.codec import TextCodec
from qflgym.agents.llm.policy import LLMPolicy, save_policy
from qflgym.agents.llm.ranker import LLMRanker, check_rank_spec
from qflgym.agents.llm.train.cli_args import prepare_run_dir
from qflgym.agents.llm.train.rollout import Rollout, make_teacher, rollout
from qflgym.agents.llm.train.sft_config import LLMSFTConfig
from qflgym.agents.llm.train.trl_hooks import compact_lm_head, seconds_per_step, step_timer
from qflgym.agents.runtime import make_env

__all__ = ["LLMSFTTrainer", "SFTResult", "completion_loss"]


@dataclass
class SFTResult:
    """What a distillation run produced.

    Attributes:
        run_dir: The run directory.
        policy_dir: The saved policy (``run_dir / "policy"``).
        losses: Training loss at each logging step.
        s_per_step: Mean seconds per optimizer step.
        teacher_return: Mean return of the recorded teacher episodes.
        n_pairs: Recorded (prompt, completion) pairs (the teacher's and every DAgger round's).
        dagger: Per DAgger round: its first reset seed, the policy's mean return and rounds on its episodes
            (before the refit), the new and total pairs, the refit's losses.
        evaluation: Per-controller evaluation summaries (when ``eval_episodes > 0``).
    """

    run_dir: Path
    policy_dir: Path
    losses: list[float] = field(default_factory=list)
    s_per_step: float = math.nan
    teacher_return: float = math.nan
    n_pairs: int = 0
    dagger: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, dict[str, float]] = field(default_factory=dict)


def completion_loss(model: Any, tokenizer: Any, pairs: list[dict[str, str]]) -> float:
    """Mean cross-entropy of the completions (EOS included) given their prompts, as the SFT objective.

    Args:
        model: Causal LM (PEFT or plain).
        tokenizer: Its tokenizer.
        pairs: Dicts with ``prompt`` and ``completion``.
    """
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for pair in pairs:
            prompt_ids = tokenizer(pair["prompt"]).input_ids
            full_ids = tokenizer(pair["prompt"] + pair["completion"] + tokenizer.eos_token).input_ids
            ids = torch.tensor([full_ids])
            labels = ids.clone()
            labels[:, : len(prompt_ids)] = -100
            out = model(input_ids=ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            total += float(out.loss) * n
            count += n
    if was_training:
        model.train()
    return total / max(count, 1)


def summarize_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each numeric metric over evaluation rows (NaNs ignored)."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
    out = {}
    for k in keys:
        vals = np.array([r.get(k, math.nan) for r in rows], dtype=float)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    return out


class LLMSFTTrainer:
    """Distillation of a teacher controller into an LLM policy (see the module docstring).

    Args:
        config: The run's configuration.
        argv: Command line recorded in the run directory (default ``sys.argv``).
    """

    def __init__(self, config: LLMSFTConfig, argv: list[str] | None = None) -> None:
        self.config = config
        self.argv = argv
        self.run_dir: Path | None = None

    def collect(self, env: Any, codec: TextCodec, teacher: Any, actor: Any = None, iteration: int = 0) -> Rollout:
        """The teacher's episodes, or with ``actor`` DAgger round ``iteration``'s (the actor acts, the teacher labels).

        Records of a DAgger round carry ``"dagger": iteration + 1`` (the teacher's own: 0).
        """
        cfg = self.config
        dagger = actor is not None
        data = rollout(
            env,
            teacher,
            codec,
            cfg.dagger_episodes if dagger else cfg.episodes,
            cfg.dagger_seed(iteration) if dagger else cfg.seed,
            deterministic=cfg.teacher_deterministic,
            progress=cfg.progress,
            description=f"dagger {iteration + 1}" if dagger else "teacher",
            max_steps=cfg.dagger_episode_steps if dagger else cfg.episode_steps,
            keep_observations=cfg.head == "rank",
            actor=actor,
        )
        for record in data.records:
            record["dagger"] = iteration + 1 if dagger else 0
        return data

    def train(self) -> SFTResult:
        """Collect, fine-tune, save the policy (and evaluate when configured)."""
        cfg = self.config
        torch.set_num_threads(cfg.torch_threads or os.cpu_count() or 1)
        adapter = resolve_adapter(cfg.adapter)
        self.run_dir = run_dir = prepare_run_dir(cfg.out, "sft", cfg, cfg.run_name, self.argv)
        env = make_env(cfg.env_id, cfg.env_config)
        try:
            codec = TextCodec.from_env(env, cfg.codec_config())
            if cfg.head == "rank":
                check_rank_spec(codec)
            teacher = make_teacher(cfg.teacher, env, seed=cfg.seed, kwargs=cfg.teacher_kwargs)
            data = self.collect(env, codec, teacher)
            returns = list(data.returns)
            torch.manual_seed(cfg.seed)
            model, tokenizer = cfg.fresh_model(adapter)
            timer = step_timer()
            start = time.perf_counter()
            losses = self.fit(model, tokenizer, data, codec, timer, str(run_dir / "trainer"))
            dagger = []
            for it in range(cfg.dagger_iterations):
                visited = self.collect(env, codec, teacher, actor=self.policy(model, tokenizer, codec), iteration=it)
                data.extend(visited)
                fit_losses = self.fit(model, tokenizer, data, codec, timer, str(run_dir / "trainer"), cfg.dagger_steps)
                dagger.append(
                    {
                        "seed": cfg.dagger_seed(it),
                        "policy_return": float(np.mean(visited.returns)),
                        "policy_rounds": float(np.mean(visited.rounds)),
                        "new_pairs": len(visited.records),
                        "pairs": len(data.records),
                        "losses": fit_losses,
                    }
                )
                losses += fit_losses
            elapsed = time.perf_counter() - start
        finally:
            env.close()
        records = data.records
        with (run_dir / "data.jsonl").open("w") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
        steps = len(timer.times)
        model.eval()
        policy_dir = save_policy(
            run_dir / "policy",
            model,
            model_name=cfg.model,
            adapter_name=adapter.name,
            codec_config=cfg.codec_config(),
            extra={
                "env_id": cfg.env_id,
                "env_config": cfg.env_config,
                "teacher": cfg.teacher,
                "teacher_kwargs": cfg.teacher_kwargs,
                "teacher_deterministic": cfg.teacher_deterministic,
                "trainer": "sft",
                "head": cfg.head,
                "model_seed": cfg.model_seed,
                "dtype": cfg.dtype,
            },
        )
        write_adapter_meta(policy_dir, cfg.adapter_config(), adapter.name)
        result = SFTResult(
            run_dir=run_dir,
            policy_dir=policy_dir,
            losses=losses,
            s_per_step=seconds_per_step(timer.times),
            teacher_return=float(np.mean(returns)) if returns else math.nan,
            n_pairs=len(records),
            dagger=dagger,
        )
        if cfg.eval_episodes > 0:
            result.evaluation = evaluate_against_teacher(
                cfg.env_id,
                cfg.env_config,
                self.policy(model, tokenizer, codec),
                cfg.teacher,
                cfg.teacher_kwargs,
                cfg.eval_episodes,
                cfg.eval_seed,
                teacher_deterministic=cfg.teacher_deterministic,
            )
        (run_dir / "metrics.json").write_text(
            json.dumps(
                {
                    "losses": losses,
                    "s_per_step": result.s_per_step,
                    "step_times": timer.times,
                    "steps": steps,
                    "train_seconds": elapsed,
                    "teacher_return": result.teacher_return,
                    "n_pairs": result.n_pairs,
                    "dagger": dagger,
                    "evaluation": result.evaluation,
                },
                indent=2,
            )
        )
        return result

    def policy(self, model: Any, tokenizer: Any, codec: TextCodec) -> Any:
        """The policy being trained, acting on ``codec``'s env: the ranker (``head: rank``) or the generator."""
        kind = LLMRanker if self.config.head == "rank" else LLMPolicy
        return kind(model, tokenizer, codec, seed=self.config.seed)

    def fit(
        self,
        model: Any,
        tokenizer: Any,
        data: Rollout,
        codec: TextCodec,
        timer: Any,
        output_dir: str,
        max_steps: int | None = None,
    ) -> list[float]:
        """Fine-tune ``model`` in place on ``data`` for ``max_steps`` (default: the config's); the logged losses.

        The trainer is TRL's ``SFTTrainer`` on the completions, or the :class:`RankTrainer` on the cohorts (``head``).
        """
        from datasets import Dataset

        cfg = self.config
        if cfg.head == "rank":
            from qflgym.agents.llm.train.rank_fit import RankTrainer, ranking_examples

            examples = ranking_examples(
                data.records, data.observations, codec, tokenizer, data.labels, cfg.target_temperature
            )
            trainer = RankTrainer(
                model=model,
                args=cfg.to_training_args(output_dir, max_steps),
                train_dataset=Dataset.from_list(examples),
                callbacks=[timer],
                tokenizer=tokenizer,
                membership_k=None if cfg.target_temperature is None else cfg.cohort_size,
            )
        else:
            from trl import SFTTrainer

            pairs = [{"prompt": r["prompt"], "completion": r["completion"]} for r in data.records]
            trainer = SFTTrainer(
                model=model,
                callbacks=[timer],
                args=cfg.to_trl(output_dir, max_steps),
                train_dataset=Dataset.from_list(pairs),
                processing_class=tokenizer,
            )
        with compact_lm_head():
            trainer.train()
        return [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]


def evaluate_against_teacher(
    env_id: str,
    env_config: dict[str, Any],
    policy: Any,
    teacher: str,
    teacher_kwargs: dict[str, Any],
    episodes: int,
    seed: int,
    teacher_deterministic: bool = True,
) -> dict[str, dict[str, float]]:
    """Evaluate the LLM policy (greedy) and the teacher on the same unseen seeds; mean metrics per controller.

    ``teacher_deterministic`` is how the teacher acted when its pairs were recorded (``False``: sampled).
    """
    from qflgym.agents.evaluation import evaluate

    seeds = [seed + i for i in range(episodes)]
    out: dict[str, dict[str, float]] = {}
    env = make_env(env_id, env_config)
    try:
        if hasattr(policy, "reset_stats"):
            policy.reset_stats()
        rows = evaluate(env, policy, seeds, deterministic=True)
        summary = summarize_rows(rows)
        if hasattr(policy, "invalid_rate"):
            summary["invalid_rate"] = float(policy.invalid_rate)
        out["llm"] = summary
        teacher_ctrl = make_teacher(teacher, env, seed=seed, kwargs=teacher_kwargs)
        out["teacher"] = summarize_rows(evaluate(env, teacher_ctrl, seeds, deterministic=teacher_deterministic))
    finally:
        env.close()
    return out
