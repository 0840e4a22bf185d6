"""Hooks into TRL / transformers training: the CPU LM-head shortcut and the optimizer-step timer."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["compact_lm_head", "seconds_per_step", "step_timer"]


@contextlib.contextmanager
def compact_lm_head() -> Any:
    """Make TRL's fused LM head score only the labelled (completion) positions on CPU too.

    TRL 1.x projects hidden states through the LM head in tiles and, on CUDA/XPU, only at positions with a label;
    elsewhere it scores *every* position so that tile shapes stay static for compilers (Neuron). Eager CPU has no
    such constraint, and for Gemma-3 (a 262k-token head) scoring a 300-token prompt whose completion is 5 tokens
    wastes most of a training step. The switch is TRL's private ``_use_triton`` lookup in ``trl.trainer.utils``
    (only the compact/full decision reads it there; the kernels keep their own CPU path). A no-op if TRL changes.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


def step_timer() -> Any:
    """A ``transformers.TrainerCallback`` recording the wall time of every optimizer step (``.times``)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def seconds_per_step(step_times: Sequence[float]) -> float:
    """Typical seconds per optimizer step: the median, leaving out the first step (warm-up) when there are more."""
    times = list(step_times[1:] if len(step_times) > 2 else step_times)
    return float(np.median(times)) if times else float("nan")
