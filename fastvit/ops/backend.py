"""Backend choice shared by the ops. "auto" runs the Triton kernel for CUDA tensors (float64 excepted) and
plain torch otherwise; an explicit backend that cannot run here is a ValueError naming what is missing."""

import torch


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
