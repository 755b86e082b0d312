"""pytest set-up: environment, threads, and the shared builders of ``fixtures`` as fixtures."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread everywhere (child processes too): on a busy 2-core machine two-thread
# OpenMP kernels (the ticket's eigh/SVD of 384 x 384 matrices) measured 40-100x slower than
# one, and bitwise results (determinism and resume tests) depend on the thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from fixtures import (  # noqa: E402,F401  (re-exported: tests import them from conftest)
    CrashAfter,
    PlainSGD,
    classification_data,
    dense_reference,
    masked_layer,
    news_rows,
    numbered,
    randomize_adapters,
    small_mlp,
    tiny_bert,
    tiny_deberta,
    tiny_gpt2,
    tiny_llama,
    tiny_vit,
    token_batch,
    write_csv,
)


@pytest.fixture
def bert_factory():
    return tiny_bert


@pytest.fixture
def one_thread():
    """For tests that must hold one intra-op thread even if a test before them changed it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def float64_default():
    """Tensors are created in float64 inside the test (exact numeric checks)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
