"""Test tiers: cpu (default), gpu (skipped with the reason when no GPU), multirank, slow."""

import os
import sys
from pathlib import Path

import pytest
import torch

# `python -m pytest` puts the repository root on sys.path, where the top-level kernels/ folder would shadow PyPI's
# `kernels` project (transformers imports it to probe for hub kernels). fastvit itself is found through its install.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _ROOT]

# Without a GPU the Triton kernels run through the interpreter; it must be set before any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
