"""fastvit.ops.prototype_cross_entropy: the DINO / iBOT loss without ever building [rows, K] logits.

Student logits s = xs @ Ws^T / student_temp and the teacher targets P (TeacherTargets, factored) are recomputed
block by block over the K prototypes, in the forward (online logsumexp) and again in the backward (the fused
linear cross-entropy idea), so the largest temporaries are [rows, chunk]. Pure torch: matmuls in the input dtype,
everything else in fp32. Custom op fastvit::prototype_cross_entropy with register_fake and register_autograd.

Output: the pair-loss matrix L [S, T], L[i, j] = sum_b row_weight[b] * CE(student crop i row b, target crop j row b)
with CE = -sum_k P log_softmax(s). Gradients flow to the student features and prototypes; the teacher is constant.
"""

import torch

from fastvit.ops.prototype_targets import DEFAULT_CHUNK, TeacherTargets

_BACKENDS = ("auto", "torch")


def _chunks(xs2, ws, xt2, wt, a, b2, t_inv, s_temp, chunk):
    """Yields (k0, s [SB, kc] fp32 scaled student logits, P [TB, kc] fp32 teacher targets)."""
    for k0 in range(0, ws.shape[0], chunk):
        k1 = min(k0 + chunk, ws.shape[0])
        s = (xs2 @ ws[k0:k1].t()).float() / s_temp
        p = torch.exp((xt2 @ wt[k0:k1].t()).float() * t_inv + a[k0:k1] + b2[:, None])
        yield k0, s, p


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    (S, B, D), T = xs.shape, xt.shape[0]
    m = torch.full((S, B), float("-inf"), device=xs.device)
    sumexp = torch.zeros(S, B, device=xs.device)
    psum = torch.zeros(T, B, device=xs.device)
    cross = torch.zeros(S, T, B, device=xs.device)  # sum_k P[t, b, k] * s[s, b, k]
    for _, s, p in _chunks(xs.reshape(S * B, D), ws, xt.reshape(T * B, D), wt, a, b.reshape(-1), t_inv, s_temp, chunk):
        s, p = s.view(S, B, -1), p.view(T, B, -1)
        m_new = torch.maximum(m, s.amax(-1))
        sumexp = sumexp * torch.exp(m - m_new) + torch.exp(s - m_new[..., None]).sum(-1)
        m = m_new
        psum += p.sum(-1)
        cross += torch.einsum("sbk,tbk->stb", s, p)
    lse = m + torch.log(sumexp)  # [S, B]
    ce = psum[None] * lse[:, None] - cross  # [S, T, B]
    return (ce * row_w.float()).sum(-1), lse, psum


@_fwd_op.register_fake
def _(xs, ws, xt, wt, a, b, row_w, t_inv, s_temp, chunk):
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
) -> tuple[torch.Tensor, torch.Tensor]:
    (S, B, D), T = xs.shape, xt.shape[0]
    coef = g.float()[:, :, None] * row_w.float()  # [S, T, B]
    wsum = (coef * psum[None]).sum(1)  # [S, B]
    xs2 = xs.reshape(S * B, D)
    gxs = torch.zeros(S * B, D, device=xs.device)
    gws = torch.empty_like(ws)
    for k0, s, p in _chunks(xs2, ws, xt.reshape(T * B, D), wt, a, b.reshape(-1), t_inv, s_temp, chunk):
        s, p = s.view(S, B, -1), p.view(T, B, -1)
        pbar = torch.einsum("stb,tbk->sbk", coef, p)
        gs = ((torch.exp(s - lse[..., None]) * wsum[..., None] - pbar) / s_temp).reshape(S * B, -1).to(xs.dtype)
        gxs += (gs @ ws[k0 : k0 + gs.shape[1]]).float()
        gws[k0 : k0 + gs.shape[1]] = gs.t() @ xs2
    return gxs.to(xs.dtype).view(S, B, D), gws


@_bwd_op.register_fake
def _(g, xs, ws, xt, wt, a, b, row_w, lse, psum, t_inv, s_temp, chunk):
    return torch.empty_like(xs), torch.empty_like(ws)


def _setup_context(ctx, inputs, output):
    xs, ws, xt, wt, a, b, row_w, t_inv, s_temp, chunk = inputs
    _, lse, psum = output
    ctx.save_for_backward(xs, ws, xt, wt, a, b, row_w, lse, psum)
    ctx.consts = (t_inv, s_temp, chunk)
    ctx.mark_non_differentiable(lse, psum)


def _backward(ctx, g_loss, _g_lse, _g_psum):
    xs, ws, xt, wt, a, b, row_w, lse, psum = ctx.saved_tensors
    gxs, gws = _bwd_op(g_loss, xs, ws, xt, wt, a, b, row_w, lse, psum, *ctx.consts)
    return gxs, gws, None, None, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _check(xs, ws, targets, row_weight):
    if xs.dim() != 3 or ws.dim() != 2 or xs.shape[-1] != ws.shape[-1]:
        raise ValueError(
            f"student features must be [S, B, D] and prototypes [K, D], got {tuple(xs.shape)}, {tuple(ws.shape)}"
        )
    tx, tw = targets.features, targets.prototypes
    if tx.shape[1] != xs.shape[1] or tw.shape[0] != ws.shape[0]:
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

    row_weight [B] defaults to 1 / B (L[i, j] = mean over rows of the cross-entropy). `chunk` prototypes per block.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"prototype_cross_entropy backend {backend!r} is not available; choose one of {_BACKENDS}")
    if not isinstance(targets, TeacherTargets):
        raise ValueError(f"targets must be a TeacherTargets, got {type(targets).__name__}")
    if chunk < 1 or not student_temp > 0:
        raise ValueError(f"prototype_cross_entropy needs chunk >= 1 and student_temp > 0, got {chunk}, {student_temp}")
    B = student_features.shape[1] if student_features.dim() == 3 else 0
    if row_weight is None:
        row_weight = torch.full((B,), 1.0 / max(B, 1), device=student_features.device)
    _check(student_features, student_prototypes, targets, row_weight)
    t = targets
    args = (t.features.detach(), t.prototypes.detach(), t.a.float(), t.b.float(), row_weight.detach().float())
    loss, _, _ = _fwd_op(
        student_features, student_prototypes, *args, float(t.inv_temp), float(student_temp), int(chunk)
    )
    return loss


def prototype_cross_entropy_ref(student_features, student_prototypes, targets, student_temp, row_weight=None):
    """Plain torch: materialise logits [S, B, K] and targets [T, B, K] (fp32; float64 stays float64)."""
    dt = torch.float64 if student_features.dtype == torch.float64 else torch.float32
    B = student_features.shape[1]
    row_weight = torch.full((B,), 1.0 / B, dtype=dt) if row_weight is None else row_weight.to(dt)
    lsm = torch.log_softmax((student_features @ student_prototypes.t()).to(dt) / student_temp, dim=-1)  # [S, B, K]
    p = targets.materialize().to(dt)  # [T, B, K]
    ce = -(p[None] * lsm[:, None]).sum(-1)  # [S, T, B]
    return (ce * row_weight.to(lsm.device)).sum(-1)
