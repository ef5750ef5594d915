"""fastvit.ops.prototype_cross_entropy: the DINO / iBOT loss without ever building [rows, K] logits.

Student logits s = xs @ Ws^T / student_temp and the teacher targets P (TeacherTargets, factored) are recomputed
tile by tile over the K prototypes, in the forward (online logsumexp) and again in the backward (the fused linear
cross-entropy idea). backend "triton": kernels/prototype_cross_entropy.py, one fused kernel per pass; "torch":
chunked matmuls of `chunk` prototypes (largest temporaries [rows, chunk]); "auto": Triton on CUDA, torch elsewhere.
Matmuls run in the features' dtype (bf16 / fp16 under autocast), everything else in fp32.
Custom ops fastvit::prototype_cross_entropy / _bwd with register_fake and register_autograd.

Output: the pair-loss matrix L [S, T], L[i, j] = sum_b row_weight[b] * CE(student crop i row b, target crop j row b)
with CE = -sum_k P log_softmax(s). Gradients flow to the student features and prototypes (and through the
prototypes g * normalize(V) to the heads' g and V); the teacher is constant.
"""

import torch

from fastvit.ops import backend as backend_lib
from fastvit.ops.prototype_targets import (
    DEFAULT_CHUNK,
    TeacherTargets,
    autocast_operands,
    matmul_operands,
    operand_dtype,
)

REGISTRATION = backend_lib.Registration(
    ops=("prototype_cross_entropy",),
    kernels=("prototype_cross_entropy",),
    backends=("auto", "triton", "torch"),
    bench="dino_loss",
)
BACKENDS = REGISTRATION.backends  # the names WebDINOObjective(backend=) accepts


def _chunks(xs2, ws, xt2, wt, a, b2, inv_ts, inv_tt, chunk):
    """Yields (k0, s [SB, kc] fp32 scaled student logits, P [TB, kc] fp32 teacher targets)."""
    xs2, ws = matmul_operands(xs2, ws)
    xt2, wt = matmul_operands(xt2, wt)
    for k0 in range(0, ws.shape[0], chunk):
        k1 = min(k0 + chunk, ws.shape[0])
        s = (xs2 @ ws[k0:k1].t()).float() * inv_ts
        p = torch.exp((xt2 @ wt[k0:k1].t()).float() * inv_tt + a[k0:k1] + b2[:, None])
        yield k0, s, p


def _rounded(x, w):
    """Both operands in the dtype the torch path rounds them to (bf16 features pull fp32 prototypes down)."""
    dt = operand_dtype(x, w)
    return x.to(dt), w.to(dt)


def _fwd_torch(xs, ws, xt, wt, a, b, inv_ts, inv_tt, chunk):
    (S, B, D), T = xs.shape, xt.shape[0]
    m = torch.full((S, B), float("-inf"), device=xs.device)
    sumexp = torch.zeros(S, B, device=xs.device)
    psum = torch.zeros(T, B, device=xs.device)
    cross = torch.zeros(S, T, B, device=xs.device)  # sum_k P[t, b, k] * s[s, b, k]
    chunks = _chunks(xs.reshape(S * B, D), ws, xt.reshape(T * B, D), wt, a, b.reshape(-1), inv_ts, inv_tt, chunk)
    for _, s, p in chunks:
        s, p = s.view(S, B, -1), p.view(T, B, -1)
        m_new = torch.maximum(m, s.amax(-1))
        sumexp = sumexp * torch.exp(m - m_new) + torch.exp(s - m_new[..., None]).sum(-1)
        m = m_new
        psum += p.sum(-1)
        cross += torch.einsum("sbk,tbk->stb", s, p)
    return cross, m + torch.log(sumexp), psum


def _bwd_torch(xs, ws, xt, wt, a, b, lse, coef, csum, inv_ts, inv_tt, chunk):
    (S, B, D), T = xs.shape, xt.shape[0]
    xs2 = xs.reshape(S * B, D)
    gxs = torch.zeros(S * B, D, device=xs.device)
    gws = torch.empty(ws.shape, device=ws.device)
    mm_x, _ = matmul_operands(xs2, ws)
    for k0, s, p in _chunks(xs2, ws, xt.reshape(T * B, D), wt, a, b.reshape(-1), inv_ts, inv_tt, chunk):
        s, p = s.view(S, B, -1), p.view(T, B, -1)
        pbar = torch.einsum("stb,tbk->sbk", coef, p)
        gs = ((torch.exp(s - lse[..., None]) * csum[..., None] - pbar) * inv_ts).reshape(S * B, -1)
        w = ws[k0 : k0 + gs.shape[1]]
        gs_mm, w = matmul_operands(gs.to(mm_x.dtype), w)
        gxs += (gs_mm @ w).float()
        gws[k0 : k0 + gs.shape[1]] = (gs_mm.t() @ mm_x).float()
    return gxs.view(S, B, D), gws


@torch.library.custom_op("fastvit::prototype_cross_entropy", mutates_args=())
def _fwd_op(
    xs: torch.Tensor,
    ws: torch.Tensor,
    xt: torch.Tensor,
    wt: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    row_w: torch.Tensor,
    t_inv: float,
    s_temp: float,
    chunk: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.autocast(xs.device.type, enabled=False):  # the op picks its own dtypes (see matmul_operands)
        if backend == "triton":
            from fastvit.kernels.prototype_cross_entropy import prototype_cross_entropy_fwd_triton

            student, teacher = _rounded(xs, ws), _rounded(xt, wt)
            cross, lse, psum = prototype_cross_entropy_fwd_triton(*student, *teacher, a, b, s_temp, t_inv)
        else:
            cross, lse, psum = _fwd_torch(xs, ws, xt, wt, a, b, 1.0 / s_temp, t_inv, chunk)
        ce = psum[None] * lse[:, None] - cross  # [S, T, B]
        return (ce * row_w).sum(-1), lse, psum


@_fwd_op.register_fake
def _(xs, ws, xt, wt, a, b, row_w, t_inv, s_temp, chunk, backend):
    (S, B, _), T = xs.shape, xt.shape[0]
    f32 = torch.float32
    return xs.new_empty(S, T, dtype=f32), xs.new_empty(S, B, dtype=f32), xs.new_empty(T, B, dtype=f32)


@torch.library.custom_op("fastvit::prototype_cross_entropy_bwd", mutates_args=())
def _bwd_op(
    g: torch.Tensor,
    xs: torch.Tensor,
    ws: torch.Tensor,
    xt: torch.Tensor,
    wt: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    row_w: torch.Tensor,
    lse: torch.Tensor,
    psum: torch.Tensor,
    t_inv: float,
    s_temp: float,
    chunk: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(xs.device.type, enabled=False):
        coef = (g.float()[:, :, None] * row_w).contiguous()  # [S, T, B]
        csum = (coef * psum[None]).sum(1)  # [S, B]
        if backend == "triton":
            from fastvit.kernels.prototype_cross_entropy import prototype_cross_entropy_bwd_triton

            student, teacher = _rounded(xs, ws), _rounded(xt, wt)
            gxs, gws = prototype_cross_entropy_bwd_triton(*student, *teacher, a, b, lse, coef, csum, s_temp, t_inv)
        else:
            gxs, gws = _bwd_torch(xs, ws, xt, wt, a, b, lse, coef, csum, 1.0 / s_temp, t_inv, chunk)
        return gxs.to(xs.dtype), gws.to(ws.dtype)


@_bwd_op.register_fake
def _(g, xs, ws, xt, wt, a, b, row_w, lse, psum, t_inv, s_temp, chunk, backend):
    return torch.empty_like(xs), torch.empty_like(ws)


def _setup_context(ctx, inputs, output):
    xs, ws, xt, wt, a, b, row_w, t_inv, s_temp, chunk, backend = inputs
    _, lse, psum = output
    ctx.save_for_backward(xs, ws, xt, wt, a, b, row_w, lse, psum)
    ctx.consts = (t_inv, s_temp, chunk, backend)
    ctx.mark_non_differentiable(lse, psum)


def _backward(ctx, g_loss, _g_lse, _g_psum):
    xs, ws, xt, wt, a, b, row_w, lse, psum = ctx.saved_tensors
    gxs, gws = _bwd_op(g_loss.contiguous(), xs, ws, xt, wt, a, b, row_w, lse, psum, *ctx.consts)
    return gxs, gws, None, None, None, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _check(xs, ws, targets, row_weight):
    if xs.dim() != 3 or ws.dim() != 2 or xs.shape[-1] != ws.shape[-1]:
        raise ValueError(
            f"student features must be [S, B, D] and prototypes [K, D], got {tuple(xs.shape)}, {tuple(ws.shape)}"
        )
    tx, tw = targets.features, targets.prototypes
    if tx.shape[1] != xs.shape[1] or tw.shape[0] != ws.shape[0] or tx.shape[-1] != tw.shape[-1]:
        raise ValueError(
            f"teacher features {tuple(tx.shape)} / prototypes {tuple(tw.shape)} do not match the student's "
            f"B = {xs.shape[1]} rows and K = {ws.shape[0]} prototypes"
        )
    if row_weight.shape != (xs.shape[1],):
        raise ValueError(f"row_weight must be [B] = [{xs.shape[1]}], got {tuple(row_weight.shape)}")


def prototype_cross_entropy(
    student_features, student_prototypes, targets, student_temp, row_weight=None, *, chunk=DEFAULT_CHUNK, backend="auto"
):
    """Pair-loss matrix L [S, T] (fp32) of student features [S, B, D] and prototypes [K, D] against TeacherTargets.

    row_weight [B] defaults to 1 / B (L[i, j] = mean over rows of the cross-entropy). `chunk`: prototypes per block
    of the torch backend.
    """
    if not isinstance(targets, TeacherTargets):
        raise ValueError(f"targets must be a TeacherTargets, got {type(targets).__name__}")
    if chunk < 1 or not student_temp > 0:
        raise ValueError(f"prototype_cross_entropy needs chunk >= 1 and student_temp > 0, got {chunk}, {student_temp}")
    be = REGISTRATION.resolve("prototype_cross_entropy", backend, student_features)
    B = student_features.shape[1] if student_features.dim() == 3 else 0
    if row_weight is None:
        row_weight = torch.full((B,), 1.0 / max(B, 1), device=student_features.device)
    _check(student_features, student_prototypes, targets, row_weight)
    student_features, student_prototypes = autocast_operands(student_features, student_prototypes)
    t = targets
    args = (t.features.detach(), t.prototypes.detach(), t.a.float(), t.b.float(), row_weight.detach().float())
    loss, _, _ = _fwd_op(
        student_features, student_prototypes, *args, float(t.inv_temp), float(student_temp), int(chunk), be
    )
    return loss
