"""fastvit.ops.soft_cross_entropy: per-row -sum_k p * log_softmax(s / temp), fused forward and backward.

Registered as the custom ops fastvit::soft_cross_entropy_fwd / _bwd (register_fake + register_autograd).
backend: "auto" (Triton on CUDA, torch elsewhere), "triton" (also on the CPU under TRITON_INTERPRET=1), "torch".
"""

import torch

from fastvit.kernels import soft_cross_entropy as _k
from fastvit.ops import backend as backend_lib

BACKENDS = ("auto", "triton", "torch")


def available(device):
    """Backends (besides "auto") usable for tensors on `device`."""
    return (["triton"] if backend_lib.triton_runs(_k, device) else []) + ["torch"]


def _fwd_torch(s_RK, p_RK, temp):
    z = s_RK.float() / temp
    p = p_RK.float()
    lse = torch.logsumexp(z, dim=-1)
    psum = p.sum(-1)
    return psum * lse - (p * z).sum(-1), lse, psum


def _bwd_torch(g_R, s_RK, p_RK, lse_R, psum_R, temp, grad_p):
    z = s_RK.float() / temp
    g = g_R.float()[:, None]
    gs = (torch.exp(z - lse_R[:, None]) * psum_R[:, None] - p_RK.float()) * (g / temp)
    gp = ((lse_R[:, None] - z) * g).to(p_RK.dtype) if grad_p else None
    return gs.to(s_RK.dtype), gp


@torch.library.custom_op("fastvit::soft_cross_entropy_fwd", mutates_args=())
def _fwd_op(
    s: torch.Tensor, p: torch.Tensor, temp: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton":
        return _k.soft_cross_entropy_fwd_triton(s, p, temp)
    return _fwd_torch(s, p, temp)


@_fwd_op.register_fake
def _(s, p, temp, backend):
    R = s.shape[0]
    return tuple(s.new_empty(R, dtype=torch.float32) for _ in range(3))


@torch.library.custom_op("fastvit::soft_cross_entropy_bwd", mutates_args=())
def _bwd_op(
    g: torch.Tensor,
    s: torch.Tensor,
    p: torch.Tensor,
    lse: torch.Tensor,
    psum: torch.Tensor,
    temp: float,
    grad_p: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        gs, gp = _k.soft_cross_entropy_bwd_triton(g, s, p, lse, psum, temp, grad_p)
    else:
        gs, gp = _bwd_torch(g, s, p, lse, psum, temp, grad_p)
    return gs, (gp if gp is not None else p.new_empty(0))


@_bwd_op.register_fake
def _(g, s, p, lse, psum, temp, grad_p, backend):
    return torch.empty_like(s), (torch.empty_like(p) if grad_p else p.new_empty(0))


def _setup_context(ctx, inputs, output):
    s, p, temp, backend = inputs
    _, lse, psum = output
    ctx.save_for_backward(s, p, lse, psum)
    ctx.temp, ctx.backend = temp, backend
    ctx.mark_non_differentiable(lse, psum)


def _backward(ctx, g_loss, _g_lse, _g_psum):
    s, p, lse, psum = ctx.saved_tensors
    need_p = ctx.needs_input_grad[1]
    gs, gp = _bwd_op(g_loss.contiguous(), s, p, lse, psum, ctx.temp, need_p, ctx.backend)
    return gs, (gp if need_p else None), None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def soft_cross_entropy(student_logits, teacher_probs, student_temp, *, backend="auto"):
    """Per-row loss [R] (fp32) = -sum_k p * log_softmax(s / student_temp) over the last dim of [..., K] inputs.

    Leading dims are flattened into rows and restored on the output. Differentiable in both inputs.
    """
    if student_logits.shape != teacher_probs.shape or student_logits.dim() < 1:
        raise ValueError(
            f"soft_cross_entropy expects equal [..., K] shapes, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_probs.shape)}"
        )
    if not student_temp > 0:
        raise ValueError(f"soft_cross_entropy needs a positive student_temp, got {student_temp}")
    lead, K = student_logits.shape[:-1], student_logits.shape[-1]
    be = backend_lib.resolve("soft_cross_entropy", backend, student_logits, BACKENDS, available(student_logits.device))
    loss, _, _ = _fwd_op(student_logits.reshape(-1, K), teacher_probs.reshape(-1, K), float(student_temp), be)
    return loss.reshape(lead)
