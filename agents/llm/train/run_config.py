"""What ``qflgym llm sft`` and ``qflgym llm grpo`` configs share: adapter and codec options, CPU-safe TRL flags."""

from __future__ import annotations

from typing import Any

from qflgym.agents.llm.adapters import AdapterConfig
from qflgym.agents.llm.codec import CodecConfig

__all__ = ["LLMRunMixin"]


class LLMRunMixin:
    """Methods of the LLM run configs built from their common fields.

    The dataclass using it declares ``model, model_seed, adapter, lora_r, lora_alpha, lora_dropout, target_modules,
    adapter_options, decimals, lr_digits, format_hint, client_scale, client_columns, cohort_size, dtype,
    logging_steps, seed, progress``.
    """

    model: str
    model_seed: int
    adapter: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: list[str] | None
    adapter_options: dict[str, Any]
    decimals: int
    lr_digits: int | None
    format_hint: bool
    client_scale: str
    client_columns: dict[str, str] | None
    cohort_size: int | None
    dtype: str
    logging_steps: int
    seed: int
    progress: bool

    def adapter_config(self) -> AdapterConfig:
        """The adapter hyperparameters (for a fresh adapter)."""
        return AdapterConfig(
            name=self.adapter,
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=self.target_modules,
            extra=dict(self.adapter_options),
        )

    def torch_dtype(self) -> Any:
        """The base model's dtype while training (validated: the error names ``dtype`` and the allowed names)."""
        from qflgym.agents.llm.models import resolve_dtype

        return resolve_dtype(self.dtype)

    def fresh_model(self, adapter: Any) -> tuple[Any, Any]:
        """The base ``model`` (in :meth:`torch_dtype`) with fresh ``adapter`` weights, and its tokenizer.

        The adapter targets the model's registered LoRA modules (q/k/v/o for a checkpoint path) unless
        ``target_modules`` is set.
        """
        from qflgym.agents.llm.models import load_model, model_spec

        model, tokenizer = load_model(
            self.model,
            seed=self.model_seed,
            dtype=self.torch_dtype(),
            progress=self.progress,
            **adapter.base_model_kwargs(),
        )
        spec = model_spec(self.model)
        targets = spec.lora_target_modules if spec else ("q_proj", "k_proj", "v_proj", "o_proj")
        return adapter.attach(model, self.adapter_config(), targets), tokenizer

    def codec_config(self) -> CodecConfig:
        """The prompt/grammar options (saved with the policy; a loaded policy brings its own)."""
        return CodecConfig(
            decimals=self.decimals,
            lr_digits=self.lr_digits,
            format_hint=self.format_hint,
            client_scale=self.client_scale,
            client_columns=self.client_columns,
            cohort_size=self.cohort_size,
        )

    def cpu_trainer_args(self, output_dir: str) -> dict[str, Any]:
        """TRL trainer arguments every run sets: the CPU-safe flags of ``shared/STACK.md``, logging and seed."""
        return {
            "output_dir": output_dir,
            "logging_steps": self.logging_steps,
            "seed": self.seed,
            "use_cpu": True,
            "bf16": False,
            "activation_checkpointing": False,
            "save_strategy": "no",
            "report_to": "none",
            "dataloader_pin_memory": False,
            "disable_tqdm": not self.progress,
        }
