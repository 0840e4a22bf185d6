"""Shared test setup: one torch/BLAS thread per test worker (pytest-xdist runs one worker per core)."""

import os

import pytest
import torch
from threadpoolctl import threadpool_limits

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(1)
threadpool_limits(1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Restore one torch thread before every test: trainers and CLIs set the process-wide count."""
    torch.set_num_threads(1)
