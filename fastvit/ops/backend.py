"""Backend choice shared by the ops, and the one declaration each kernel family makes.

Every op module that launches Triton kernels declares `REGISTRATION = Registration(...)`: the public ops it
serves, its kernel modules under fastvit.kernels (imported lazily, on the first backend query or launch), the
backend names its `backend=` accepts and its benchmark (fastvit.benchmarks.<bench>, `fastvit bench kernels
op=<bench>`). `fastvit.ops.registrations()` finds them; `fastvit info` and `fastvit bench kernels` read them.

"auto" runs the Triton kernel for CUDA tensors (float64 excepted) and plain torch otherwise; an explicit backend
that cannot run here is a ValueError naming what is missing.

`no_autocast` wraps the implementation of every custom op: autocast does not stop at a custom op, so
without it the matmuls inside an op's forward and backward would be recast to bf16 / fp16 by the
caller's autocast region. Each op instead takes the dtype mix autocast hands it (low-precision
activations beside fp32 weights, statistics and targets) and chooses its own compute dtype.
"""

import contextlib
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

_AUTOCAST_DEVICES = ("cpu", "cuda")
_REGISTRATIONS = {}  # ops -> Registration, in the order the op modules were imported


def registrations():
    """Every kernel family's Registration (all of them once fastvit.ops is imported, which imports every op)."""
    return list(_REGISTRATIONS.values())


def _constant_under_compile(fn):
    """torch.compiler.assume_constant_result without its import of torch._dynamo (seconds) when fastvit.ops is
    imported: torch.compile calls fn while tracing and keeps the result (the importlib inside is not traceable)."""
    fn._dynamo_marked_constant = True  # the mark torch._dynamo.assume_constant_result sets
    return fn


@_constant_under_compile
def triton_runs(kernels: tuple[str, ...], device_type: str) -> bool:
    """Whether the Triton kernels fastvit.kernels.<k> for k in `kernels` run on this device type: on CUDA, or on the
    CPU when they were imported under TRITON_INTERPRET=1 (the interpreter the CPU tests use); False when one fails
    to import (no Triton)."""
    try:
        modules = [importlib.import_module(f"fastvit.kernels.{k}") for k in kernels]
    except ImportError:
        return False
    return device_type == "cuda" or (device_type == "cpu" and all(m.INTERPRETED for m in modules))


@dataclass(frozen=True)
class Registration:
    """One kernel family, declared once in its op module (see the module docstring)."""

    ops: tuple[str, ...]  # the public functions of fastvit.ops it serves (their backends are listed by `fastvit info`)
    kernels: tuple[str, ...]  # modules fastvit.kernels.<name> its "triton" backend launches
    backends: tuple[str, ...]  # every `backend=` value, "auto" first; "triton" and "torch" among them
    bench: str  # fastvit.benchmarks.<bench>, whose bench(ctx) returns the rows of `fastvit bench kernels op=<bench>`
    external: dict[str, Callable[[torch.device], bool]] = field(default_factory=dict)  # e.g. "apex": usable(device)

    def __post_init__(self):
        _REGISTRATIONS[self.ops] = self

    def available(self, device):
        """Backends (besides "auto") usable for tensors on `device`, in the declared order."""
        usable = {"torch": True, "triton": triton_runs(self.kernels, device.type)}
        return [b for b in self.backends[1:] if (usable[b] if b in usable else self.external[b](device))]

    def resolve(self, op, backend, x):
        """The backend to run `op` (its name, for the messages) on tensor x with."""
        if backend not in self.backends:
            raise ValueError(f"{op} backend must be one of {self.backends}, got {backend!r}")
        usable = self.available(x.device)
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
