"""Configuration of LLM distillation (``qflgym llm sft``): teacher rollouts → TRL ``SFTTrainer`` + an adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from qflgym.agents.llm.train.run_config import LLMRunMixin
from qflgym.config import ConfigError

__all__ = ["HEADS", "LLMSFTConfig"]

#: What ``qflgym llm sft`` can train: the generating policy, or the per-client ranker (:mod:`..ranker`).
HEADS = ("completion", "rank")


def _help(text: str, **extra: Any) -> Any:
    return {"help": text, **extra}


@dataclass
class LLMSFTConfig(LLMRunMixin):
    """Everything that defines a distillation run; each field is also a ``qflgym llm sft`` option.

    The TRL-specific settings that must hold on CPU (``use_cpu``, ``bf16=False``, no checkpointing, no
    reporting) are fixed by :meth:`to_trl`.
    """

    env_id: str = field(default="QFL/ClientSelection-v0", metadata=_help("env id to distil on"))
    env_config: dict[str, Any] = field(
        default_factory=dict, metadata=_help("env config overrides (inline YAML or a YAML file)")
    )
    teacher: str = field(
        default="loss-greedy",
        metadata=_help("teacher: a controller name (qflgym list) or a trained SB3 model (.zip / run dir)"),
    )
    teacher_kwargs: dict[str, Any] = field(default_factory=dict, metadata=_help("teacher controller kwargs"))
    teacher_deterministic: bool = field(
        default=True, metadata=_help("record the teacher's deterministic action (false: its sampled actions)")
    )
    episodes: int = field(default=20, metadata=_help("teacher episodes to record"))
    episode_steps: int | None = field(
        default=None,
        metadata=_help(
            "decisions recorded per teacher episode (None: until it ends); many short episodes show the teacher "
            "on more federations for the same number of pairs"
        ),
    )
    dagger_iterations: int = field(
        default=0,
        metadata=_help(
            "DAgger rounds after the first fit: the policy (greedy) drives dagger_episodes episodes, the teacher "
            "labels every state it visits, and the policy is refit on all the pairs for dagger_steps steps"
        ),
    )
    dagger_episodes: int = field(default=10, metadata=_help("episodes the policy drives in each DAgger round"))
    dagger_episode_steps: int | None = field(
        default=None,
        metadata=_help("decisions recorded per DAgger episode (None: until it ends; a stalled episode is long)"),
    )
    dagger_steps: int = field(default=50, metadata=_help("optimizer steps of each DAgger refit"))
    seed: int = field(
        default=0,
        metadata=_help(
            "seed of rollouts (teacher episode i resets with seed+i, DAgger round r's episode j with "
            "seed+episodes+r*dagger_episodes+j) and training"
        ),
    )
    model: str = field(default="tiny", metadata=_help("base model: gemma3-270m, tiny, or a checkpoint dir"))
    model_seed: int = field(default=0, metadata=_help("init seed of randomly initialized models (tiny)"))
    adapter: str = field(default="lora", metadata=_help("adapter registry name: lora, qlora, auto, ..."))
    lora_r: int = field(default=8, metadata=_help("LoRA rank"))
    lora_alpha: int = field(default=16, metadata=_help("LoRA alpha"))
    lora_dropout: float = field(default=0.05, metadata=_help("LoRA dropout"))
    target_modules: list[str] | None = field(default=None, metadata=_help("modules to adapt (default q/k/v/o)"))
    adapter_options: dict[str, Any] = field(
        default_factory=dict, metadata=_help("adapter options, e.g. qpa: {chunk: 1024, depth: 8} (inline YAML)")
    )
    max_steps: int = field(default=200, metadata=_help("optimizer steps (-1: use epochs)"))
    epochs: float = field(default=1.0, metadata=_help("epochs over the recorded pairs when max_steps is -1"))
    batch_size: int = field(default=8, metadata=_help("pairs per device batch"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("batches per optimizer step"))
    learning_rate: float = field(default=2e-4, metadata=_help("AdamW learning rate"))
    warmup_ratio: float = field(default=0.03, metadata=_help("fraction of steps of linear warm-up"))
    max_length: int = field(default=1024, metadata=_help("truncate prompt+completion to this many tokens"))
    decimals: int = field(default=2, metadata=_help("decimals of the numbers in prompts"))
    lr_digits: int | None = field(default=4, metadata=_help("significant digits of lr in completions"))
    format_hint: bool = field(default=True, metadata=_help("end prompts with the one-line grammar reminder"))
    client_scale: str = field(
        default="absolute", metadata=_help("client table values: absolute, or relative (0-9 within the round)")
    )
    client_columns: dict[str, str] | None = field(
        default=None, metadata=_help("client table {header: feature} (default: every column the layout has)")
    )
    cohort_size: int | None = field(
        default=None, metadata=_help("every selection names exactly this many clients (default: up to the budget)")
    )
    head: str = field(
        default="completion",
        metadata=_help(
            "what is trained: completion (TRL SFT of the canonical completions) or rank (one score per client row, "
            "the top cohort_size clients; selection-only envs)"
        ),
    )
    target_temperature: float | None = field(
        default=None,
        metadata=_help(
            "head rank: fit the teacher's soft cohort membership, sigmoid(its client scores centred on the cohort's "
            "cutoff / T), instead of its cohort (a teacher acting with one score per client, e.g. a top-k clone)"
        ),
    )
    dtype: str = field(
        default="float32",
        metadata=_help("base model weights while training: float32, bfloat16 (adapter weights stay float32)"),
    )
    eval_episodes: int = field(default=0, metadata=_help("evaluate policy and teacher on N unseen seeds after"))
    eval_seed: int = field(default=10_000, metadata=_help("first evaluation seed (disjoint from training)"))
    logging_steps: int = field(default=10, metadata=_help("log the loss every N steps"))
    torch_threads: int | None = field(default=None, metadata=_help("torch threads (default: every core)"))
    out: str = field(default="runs/llm", metadata=_help("parent folder of the run directory"))
    run_name: str | None = field(default=None, metadata=_help("run directory name (default: generated)"))
    progress: bool = field(default=True, metadata=_help("show progress bars"))

    def __post_init__(self) -> None:
        errors = []
        if self.episodes < 1:
            errors.append(f"episodes must be >= 1, got {self.episodes}")
        if self.episode_steps is not None and self.episode_steps < 1:
            errors.append(f"episode_steps must be None or >= 1, got {self.episode_steps}")
        if self.dagger_iterations < 0:
            errors.append(f"dagger_iterations must be >= 0, got {self.dagger_iterations}")
        if self.dagger_episodes < 1 or self.dagger_steps < 1:
            errors.append(
                f"dagger_episodes and dagger_steps must be >= 1, got {self.dagger_episodes}, {self.dagger_steps}"
            )
        if self.dagger_episode_steps is not None and self.dagger_episode_steps < 1:
            errors.append(f"dagger_episode_steps must be None or >= 1, got {self.dagger_episode_steps}")
        if self.max_steps == 0 or self.max_steps < -1:
            errors.append(f"max_steps must be >= 1 or -1 (use epochs), got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:
            errors.append(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            errors.append("batch_size and gradient_accumulation_steps must be >= 1")
        if self.learning_rate <= 0:
            errors.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            errors.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.head not in HEADS:
            errors.append(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        elif self.head == "rank" and self.cohort_size is None:
            errors.append("head 'rank' needs cohort_size (the k of its top-k)")
        if self.target_temperature is not None and not (
            self.head == "rank" and math.isfinite(self.target_temperature) and self.target_temperature > 0
        ):
            errors.append(
                f"target_temperature must be None or finite > 0 with head 'rank', got {self.target_temperature}"
            )
        if self.eval_episodes < 0:
            errors.append(f"eval_episodes must be >= 0, got {self.eval_episodes}")
        if errors:
            raise ConfigError("invalid LLMSFTConfig: " + "; ".join(errors))
        self.torch_dtype()
        self.adapter_config()  # validates r / dropout
        self.codec_config()  # validates decimals / lr_digits

    def dagger_seed(self, iteration: int) -> int:
        """Reset seed of the first episode of DAgger round ``iteration`` (0-based), after every teacher episode's."""
        return self.seed + self.episodes + iteration * self.dagger_episodes

    def schedule_args(self, max_steps: int | None = None) -> dict[str, Any]:
        """Steps (``max_steps``, default the first fit's), batches and the AdamW schedule, as trainer arguments."""
        return {
            "max_steps": self.max_steps if max_steps is None else max_steps,
            "num_train_epochs": self.epochs,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "learning_rate": self.learning_rate,
            "warmup_steps": self.warmup_ratio,
            "lr_scheduler_type": "linear",
        }

    def to_trl(self, output_dir: str, max_steps: int | None = None) -> Any:
        """The TRL ``SFTConfig`` (CPU-safe settings fixed: ``use_cpu``, ``bf16=False``, no saving/reporting)."""
        from trl import SFTConfig

        return SFTConfig(
            **self.cpu_trainer_args(output_dir),
            **self.schedule_args(max_steps),
            max_length=self.max_length,
            completion_only_loss=True,
        )

    def to_training_args(self, output_dir: str, max_steps: int | None = None) -> Any:
        """The ``transformers.TrainingArguments`` of a ``head: rank`` run (its batches carry their own columns)."""
        from transformers import TrainingArguments

        return TrainingArguments(
            **self.cpu_trainer_args(output_dir), **self.schedule_args(max_steps), remove_unused_columns=False
        )
