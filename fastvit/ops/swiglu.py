"""fastvit.ops.swiglu: [..., 2h] -> silu(x[..., :h]) * x[..., h:] (the Web-SSL w12 layout).

Registered as the custom op fastvit::swiglu (+ fastvit::swiglu_backward) with a fake and an
autograd formula; backends "triton" (fastvit.kernels.swiglu) and "torch". The output and the gradient
have the dtype of x (dy may be of any float dtype); both backends compute in fp32 (fp64 for fp64) and
round once, and the caller's autocast does not reach inside.
"""

import torch
import torch.nn.functional as F

from fastvit.ops import backend as backend_lib

REGISTRATION = backend_lib.Registration(
    ops=("swiglu",), kernels=("swiglu",), backends=("auto", "triton", "torch"), bench="swiglu"
)


@torch.library.custom_op("fastvit::swiglu", mutates_args=())
@backend_lib.no_autocast
def _swiglu(x: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "triton":
        from fastvit.kernels.swiglu import swiglu_fwd

        return swiglu_fwd(x)
    gate, value = x.to(backend_lib.compute_dtype(x)).chunk(2, dim=-1)
    return (F.silu(gate) * value).to(x.dtype)


@_swiglu.register_fake
def _(x, backend):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.custom_op("fastvit::swiglu_backward", mutates_args=())
@backend_lib.no_autocast
def _swiglu_backward(dy: torch.Tensor, x: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "triton":
        from fastvit.kernels.swiglu import swiglu_bwd

        return swiglu_bwd(dy, x)
    dt = backend_lib.compute_dtype(x)
    gate, value = x.to(dt).chunk(2, dim=-1)
    dy = dy.to(dt)
    dgate = torch.ops.aten.silu_backward(dy * value, gate)  # the same fused kernel plain autograd uses
    return torch.cat([dgate, dy * F.silu(gate)], dim=-1).to(x.dtype)


@_swiglu_backward.register_fake
def _(dy, x, backend):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, backend = inputs
    ctx.save_for_backward(x)
    ctx.backend = backend


def _backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return torch.ops.fastvit.swiglu_backward(dy, x, ctx.backend), None


_swiglu.register_autograd(_backward, setup_context=_setup_context)


def swiglu(x, *, backend="auto"):
    """SiLU-gated linear unit on a fused [gate | value] last dimension: (..., 2h) -> (..., h)."""
    if x.dim() == 0 or x.shape[-1] % 2:
        raise ValueError(f"swiglu expects an even last dimension [..., 2h], got {tuple(x.shape)}")
    return torch.ops.fastvit.swiglu(x, REGISTRATION.resolve("swiglu", backend, x))
