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

# pytest-xdist workers (README's test command runs -n auto) share the cores: each takes its part of them for
# torch's intra-op threads instead of all of them, so the workers do not oversubscribe the machine.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# Without a GPU the Triton kernels run through the interpreter; it must be set before any kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    # The files holding slow or multirank tests first (stable otherwise): under -n auto the long ones start at
    # once and the short ones fill the workers' tails, instead of the last worker running one long test alone.
    long_files = {item.path for item in items if "slow" in item.keywords or "multirank" in item.keywords}
    items.sort(key=lambda item: item.path not in long_files)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
