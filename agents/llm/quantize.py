"""Post-training quantization of a loaded LLM policy for faster CPU decisions (``load_policy(quantize=...)``)."""

from __future__ import annotations

from typing import Any

import torch

from qflgym.agents.llm.text_policy import causal_lm

__all__ = ["QUANTIZATIONS", "check_quantize", "quantize_body"]

#: Post-training quantizations of a loaded policy (``load_policy(quantize=...)``, the ``llm`` controller's option):
#: each name maps to the body's linear layers it keeps in float32 (by module-name suffix).
QUANTIZATIONS: dict[str, tuple[str, ...]] = {"int8": ("down_proj",), "int8-all": ()}


def check_quantize(scheme: str | None, merge: bool = True, dtype: Any = torch.float32) -> None:
    """Raise a ``ValueError`` naming ``quantize`` and its allowed values unless ``scheme`` can be applied.

    A scheme (one of :data:`QUANTIZATIONS`) applies to a merged float32 policy; ``None`` always does.
    """
    if scheme is None:
        return
    if scheme not in QUANTIZATIONS or not merge or dtype != torch.float32:
        raise ValueError(
            f"quantize must be one of {', '.join(QUANTIZATIONS)} (or None), on a merged float32 policy; got "
            f"quantize={scheme!r}, merge={merge}, dtype={dtype}"
        )


def quantize_body(model: Any, scheme: str) -> Any:
    """Quantize the ``nn.Linear`` layers of ``model``'s transformer body in place (``scheme`` in :data:`QUANTIZATIONS`).

    PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``): int8 weights with one scale per
    output channel, activations quantized per call, int32 accumulation (fbgemm/x86 kernels). On this project's
    AVX2 CPU a 640x2048 layer runs ~3x faster than in float32. ``int8`` keeps the MLP output projections
    (``down_proj``) in float32: their inputs carry the activation outliers that per-tensor activation scales
    resolve worst (LLM.int8(), Dettmers et al. 2022); on 50 states of ``QFL/ClientSelection-v1`` the ranker kept
    its float32 cohort on 86% of them (``int8-all``: 60%). The LM head and the embeddings stay float32, so a
    ranker's answer direction is unchanged. ``torch.ao``'s quantized tensors are deprecated in favour of torchao
    (PyTorch issue 184982, pytorch/ao issue 2259) but still ship with torch 2.13; their warnings are silenced here.

    Raises:
        ValueError: If ``scheme`` is not one of :data:`QUANTIZATIONS`.
    """
    import warnings

    check_quantize(scheme)
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    lm = causal_lm(model)
    body = getattr(lm, lm.base_model_prefix)
    keep = QUANTIZATIONS[scheme]
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in body.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith(keep)
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantize_per.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        quantize_dynamic(body, spec, inplace=True)
    return model
