"""Backend choice shared by the ops. "auto" runs the Triton kernel for CUDA tensors (float64 excepted) and
plain torch otherwise; an explicit backend that cannot run here is a ValueError naming what is missing.

`no_autocast` wraps the implementation of every custom op: autocast does not stop at a custom op, so
without it the matmuls inside an op's forward and backward would be recast to bf16 / fp16 by the
caller's autocast region. Each op instead takes the dtype mix autocast hands it (low-precision
activations beside fp32 weights, statistics and targets) and chooses its own compute dtype.
"""

import contextlib
import functools

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda")


def triton_runs(kernels, device):
    """Triton kernels (the module `kernels`, None when it failed to import) run on CUDA, or on the CPU when
    the module was imported under TRITON_INTERPRET=1 (the interpreter the CPU tests use)."""
    return kernels is not None and (device.type == "cuda" or (device.type == "cpu" and kernels.INTERPRETED))


def resolve(op, backend, x, known, usable):
    """The backend to run `op` on tensor x with: `known` are the op's backend names, `usable` those that
    can run on x's device (besides "auto")."""
    if backend not in known:
        raise ValueError(f"{op} backend must be one of {known}, got {backend!r}")
    if backend == "auto":
        return "triton" if x.device.type == "cuda" and x.dtype != torch.float64 and "triton" in usable else "torch"
    if backend not in usable:
        hint = " (on a CPU, set TRITON_INTERPRET=1 before importing fastvit)" if backend == "triton" else ""
        raise ValueError(f"{op} backend {backend!r} is not available for tensors on {x.device}{hint}")
    return backend


def no_autocast(fn):
    """fn with every enabled autocast region (CPU, CUDA) switched off while it runs."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            for device in _AUTOCAST_DEVICES:
                if torch.is_autocast_enabled(device):
                    stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    return run


def compute_dtype(*tensors):
    """fp64 when any input is fp64, else fp32: the dtype an op reduces in (and computes in on a CPU)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
