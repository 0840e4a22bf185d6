"""The LLM policy: text codec, offline models, adapters, constrained decoding, TRL distillation and GRPO.

Importing this package is cheap (no torch/transformers import): it registers the ``llm`` controller into
:data:`qflgym.agents.controllers.CONTROLLERS`, so ``qflgym bench`` and ``qflgym eval`` can run a saved policy::

    make_controller("llm", env, path="runs/llm/sft/<run>/policy")      # a fine-tuned policy
    make_controller("llm", env, model="tiny")                          # an untrained base model

Modules: :mod:`.codec` (prompt and completion), :mod:`.grammar` (constrained decoding), :mod:`.models`
(``MODELS``), :mod:`.adapters` (``ADAPTERS``), :mod:`.policy` (``LLMPolicy``), :mod:`.train` (TRL distillation
and GRPO), :mod:`.cli` (``qflgym llm``).
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

__all__ = ["make_llm_controller"]


def make_llm_controller(
    env: Any,
    *,
    seed: int | None = None,
    path: str = "",
    model: str = "tiny",
    constrained: bool = True,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    dtype: str | None = None,
    quantize: str | None = None,
    torch_threads: int | None = None,
) -> Any:
    """Controller factory ``llm``: a saved LLM policy (``path``) or an untrained base ``model``.

    Args:
        env: The env (or VecEnv) the policy acts on.
        seed: Seed of sampling (and of the tiny model's init when no ``path`` is given).
        path: A policy directory written by ``qflgym llm sft`` / ``grpo`` (``.../policy``); empty for ``model``.
        model: Base model name when ``path`` is empty (``tiny``, ``gemma3-270m``, or a checkpoint dir).
        constrained: Grammar-constrained decoding (otherwise free generation + parser fallbacks).
        temperature: Sampling temperature for ``deterministic=False``.
        max_new_tokens: Generation budget (default: from the grammar).
        batch_size: Observations decoded together.
        dtype: Model dtype (``float32``, ``bfloat16``; default: a saved policy's training dtype, else float32).
        quantize: Quantize a saved policy's body for inference (``int8``; see ``qflgym.agents.llm.quantize``).
        torch_threads: ``torch.set_num_threads`` for this process.

    Raises:
        ValueError: If ``quantize`` is set without a ``path``, or is unknown.
    """
    import torch

    from qflgym.agents.llm.policy import LLMPolicy, load_policy

    if torch_threads:
        torch.set_num_threads(torch_threads)
    options = dict(
        constrained=constrained, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    if path:
        return load_policy(path, env, seed=seed or 0, dtype=dtype, quantize=quantize, **options)
    if quantize is not None:
        raise ValueError(f"quantize applies to a saved policy (path), got quantize={quantize!r} without one")
    from qflgym.agents.llm.codec import TextCodec
    from qflgym.agents.llm.models import load_model

    lm, tokenizer = load_model(model, seed=seed or 0, dtype=dtype or "float32", progress=False)
    return LLMPolicy(lm, tokenizer, TextCodec.from_env(env), seed=seed, **options)


def _register() -> None:
    try:
        from qflgym.agents.controllers import CONTROLLERS
    except ImportError:  # the agents package is optional for text-only use
        return
    if "llm" not in CONTROLLERS:
        CONTROLLERS.add("llm", make_llm_controller)


_register()
