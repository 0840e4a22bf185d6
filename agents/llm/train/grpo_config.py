"""Configuration of RL fine-tuning in the env loop (``qflgym llm grpo``): TRL ``GRPOTrainer`` with env rewards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qflgym.agents.llm.train.run_config import LLMRunMixin
from qflgym.config import ConfigError

__all__ = ["LLMGRPOConfig"]


def _help(text: str) -> Any:
    return {"help": text}


@dataclass
class LLMGRPOConfig(LLMRunMixin):
    """Everything that defines a GRPO run; each field is also a ``qflgym llm grpo`` option.

    Prompts are env states visited by ``state_policy``; a sampled completion is parsed into an action, the env is
    restored to the prompt's state (``get_state``/``set_state``) and stepped: the reward is the env's reward (summed
    over ``horizon`` rounds, later rounds acted by ``rollout_policy``, discounted by ``gamma``), weighted by
    ``env_reward_weight``, plus ``format_weight`` times ``-1`` for an invalid completion.
    """

    env_id: str = field(default="QFL/ClientSelection-v0", metadata=_help("env id to train on"))
    env_config: dict[str, Any] = field(default_factory=dict, metadata=_help("env config overrides (YAML)"))
    init_policy: str | None = field(
        default=None, metadata=_help("start from a saved policy dir (e.g. an SFT run's policy/); else a fresh adapter")
    )
    model: str = field(default="tiny", metadata=_help("base model when init_policy is not given"))
    model_seed: int = field(default=0, metadata=_help("init seed of randomly initialized models (tiny)"))
    adapter: str = field(default="lora", metadata=_help("adapter for a fresh start: lora, qlora, auto, ..."))
    lora_r: int = field(default=8, metadata=_help("LoRA rank (fresh adapter)"))
    lora_alpha: int = field(default=16, metadata=_help("LoRA alpha (fresh adapter)"))
    lora_dropout: float = field(default=0.0, metadata=_help("LoRA dropout (fresh adapter)"))
    target_modules: list[str] | None = field(default=None, metadata=_help("modules to adapt (default q/k/v/o)"))
    adapter_options: dict[str, Any] = field(
        default_factory=dict, metadata=_help("adapter options, e.g. qpa: {chunk: 1024, depth: 8} (inline YAML)")
    )
    state_policy: str = field(
        default="loss-greedy",
        metadata=_help("who visits the prompt states: a controller name, an SB3 model path, or 'self' (the policy)"),
    )
    state_policy_kwargs: dict[str, Any] = field(default_factory=dict, metadata=_help("its controller kwargs"))
    state_deterministic: bool = field(
        default=True, metadata=_help("the state policy acts greedily / by its mode (false: samples its actions)")
    )
    teacher: str | None = field(default=None, metadata=_help("controller to compare with after training"))
    episodes: int = field(default=8, metadata=_help("episodes whose states become prompts"))
    seed: int = field(default=0, metadata=_help("seed of state collection (episode i: seed+i) and training"))
    horizon: int = field(default=1, metadata=_help("env rounds summed into a completion's reward"))
    gamma: float = field(default=1.0, metadata=_help("discount of later rounds within the horizon"))
    rollout_policy: str = field(
        default="repeat", metadata=_help("acts rounds 2..horizon: 'repeat' the decision, or a controller name")
    )
    rollout_policy_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata=_help("the rollout controller's kwargs (not with 'repeat')")
    )
    env_reward_weight: float = field(default=1.0, metadata=_help("weight of the env reward"))
    format_weight: float = field(default=1.0, metadata=_help("weight of the invalid-output penalty (-1 each)"))
    num_generations: int = field(default=4, metadata=_help("completions sampled per prompt (the GRPO group)"))
    prompts_per_step: int = field(default=1, metadata=_help("prompts per optimizer step"))
    max_steps: int = field(default=50, metadata=_help("optimizer steps"))
    learning_rate: float = field(default=5e-5, metadata=_help("AdamW learning rate"))
    beta: float = field(default=0.0, metadata=_help("KL coefficient to the reference model (0: none)"))
    temperature: float = field(default=1.0, metadata=_help("sampling temperature"))
    constrained: bool = field(
        default=True, metadata=_help("sample with the grammar constraint (fast, always parseable)")
    )
    max_completion_length: int | None = field(
        default=None, metadata=_help("token budget of a completion (default: from the grammar)")
    )
    dtype: str = field(
        default="float32",
        metadata=_help("base model weights while training: float32, bfloat16 (adapter weights stay float32)"),
    )
    eval_episodes: int = field(default=0, metadata=_help("evaluate on N unseen seeds after training"))
    eval_seed: int = field(default=10_000, metadata=_help("first evaluation seed"))
    logging_steps: int = field(default=5, metadata=_help("log every N steps"))
    torch_threads: int | None = field(default=None, metadata=_help("torch threads (default: every core)"))
    decimals: int = field(default=2, metadata=_help("prompt decimals (fresh start; else the policy's)"))
    lr_digits: int | None = field(default=4, metadata=_help("lr digits in completions (fresh start)"))
    format_hint: bool = field(default=True, metadata=_help("grammar reminder line in prompts (fresh start)"))
    client_scale: str = field(default="absolute", metadata=_help("absolute or relative client values (fresh start)"))
    client_columns: dict[str, str] | None = field(
        default=None, metadata=_help("client table {header: feature} (fresh start; default: every column)")
    )
    cohort_size: int | None = field(
        default=None, metadata=_help("exact clients per selection (fresh start; default: up to the budget)")
    )
    out: str = field(default="runs/llm", metadata=_help("parent folder of the run directory"))
    run_name: str | None = field(default=None, metadata=_help("run directory name"))
    progress: bool = field(default=True, metadata=_help("show progress bars"))

    def __post_init__(self) -> None:
        errors = []
        for name in ("episodes", "horizon", "num_generations", "prompts_per_step", "max_steps"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            errors.append("num_generations must be >= 2 (GRPO compares completions within a group)")
        if not 0.0 < self.gamma <= 1.0:
            errors.append(f"gamma must be in (0, 1], got {self.gamma}")
        if self.learning_rate <= 0:
            errors.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.temperature <= 0:
            errors.append(f"temperature must be > 0, got {self.temperature}")
        if self.rollout_policy == "repeat" and self.rollout_policy_kwargs:
            errors.append("rollout_policy_kwargs: 'repeat' takes none; name a controller in rollout_policy")
        if self.beta < 0:
            errors.append(f"beta must be >= 0, got {self.beta}")
        if errors:
            raise ConfigError("invalid LLMGRPOConfig: " + "; ".join(errors))
        self.torch_dtype()
        self.adapter_config()
        self.codec_config()

    def to_trl(self, output_dir: str, max_completion_length: int) -> Any:
        """The TRL ``GRPOConfig`` (CPU-safe settings fixed)."""
        from trl import GRPOConfig

        return GRPOConfig(
            **self.cpu_trainer_args(output_dir),
            max_steps=self.max_steps,
            per_device_train_batch_size=self.num_generations * self.prompts_per_step,
            num_generations=self.num_generations,
            learning_rate=self.learning_rate,
            beta=self.beta,
            temperature=self.temperature,
            max_completion_length=max_completion_length,
            reward_weights=[self.env_reward_weight, self.format_weight],
            shuffle_dataset=True,
        )
