"""fastvit.ops.clip_loss: InfoNCE / SigLIP rows-vs-columns loss, loss and gradients chunk by chunk.

Registered as the custom op fastvit::clip_loss_chunked (register_fake + register_autograd). The forward
walks the rows in chunks of C: one (C, B) matmul of dot products, the fused per-row loss + gradient step
(backend "triton": fastvit.kernels.clip_loss.clip_rows_triton; "torch": the same step in torch), and two
matmuls that accumulate d rows and d columns. The gradients (the size of the inputs) are kept for the
backward, which only scales them by the upstream gradient; the (b, B) logits are never held at once.
Dtypes: q, k, scale and bias may each have their own (autocast: bf16 embeddings, an fp32 learned scale);
every matmul and reduction runs in fp32 whatever the caller's autocast, the loss is fp32 and each
gradient has the dtype of its input.
"""

import torch

from fastvit.ops import backend as backend_lib

REGISTRATION = backend_lib.Registration(
    ops=("clip_loss",), kernels=("clip_loss",), backends=("auto", "triton", "torch"), bench="clip_loss"
)
KINDS = ("infonce", "siglip")
CHUNK_ELEMENTS = 1 << 22  # default chunk: C * B <= 4M fp32 logits (16 MiB)


@torch.library.custom_op("fastvit::clip_loss_chunked", mutates_args=())
@backend_lib.no_autocast
def _clip_loss_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    offset: int,
    siglip: bool,
    chunk: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from fastvit.kernels.clip_loss import clip_rows_torch, clip_rows_triton

    rows = clip_rows_triton if backend == "triton" else clip_rows_torch
    qf, kf = q.float(), k.float()
    sc, bi = scale.float().reshape(()).contiguous(), bias.float().reshape(()).contiguous()
    b = q.shape[0]
    dq, dk = torch.empty_like(qf), torch.zeros_like(kf)
    sums = torch.zeros(3, dtype=torch.float32, device=q.device)  # loss, d scale, d bias
    for c0 in range(0, b, chunk):
        q_CD = qf[c0 : c0 + chunk]
        dot_CB = q_CD @ kf.t()
        loss_C, dsc_C, dbi_C = rows(dot_CB, sc, bi, offset + c0, siglip)  # dot_CB now holds dL/dl
        sums += torch.stack([loss_C.sum(), dsc_C.sum(), dbi_C.sum()])
        torch.mm(dot_CB, kf, out=dq[c0 : c0 + chunk])
        dk.addmm_(dot_CB.t(), q_CD)
    sums /= max(b, 1)
    g = sc / max(b, 1)
    return sums[0].clone(), dq.mul_(g), dk.mul_(g), sums[1].clone(), sums[2].clone()


@_clip_loss_chunked.register_fake
def _(q, k, scale, bias, offset, siglip, chunk, backend):
    f32 = torch.float32
    scalar = lambda: q.new_empty((), dtype=f32)
    return scalar(), q.new_empty(q.shape, dtype=f32), k.new_empty(k.shape, dtype=f32), scalar(), scalar()


def _setup_context(ctx, inputs, output):
    q, k, scale, bias = inputs[:4]
    _, dq, dk, dsc, dbi = output
    ctx.save_for_backward(dq, dk, dsc, dbi)
    ctx.meta = (q.dtype, k.dtype, scale.shape, scale.dtype, bias.shape, bias.dtype)
    ctx.mark_non_differentiable(dq, dk, dsc, dbi)


def _backward(ctx, g, *_unused):
    dq, dk, dsc, dbi = ctx.saved_tensors
    q_dt, k_dt, s_shape, s_dt, b_shape, b_dt = ctx.meta
    grads = (
        (g * dq).to(q_dt),
        (g * dk).to(k_dt),
        (g * dsc).reshape(s_shape).to(s_dt),
        (g * dbi).reshape(b_shape).to(b_dt),
    )
    return *grads, None, None, None, None


_clip_loss_chunked.register_autograd(_backward, setup_context=_setup_context)


def clip_loss(q_bD, k_BD, logit_scale, *, offset=0, kind="infonce", logit_bias=None, chunk_rows=0, backend="auto"):
    """Mean over the b rows of q (b, D) of the contrastive loss against the columns k (B, D), fp32 scalar.

    Row i's positive is column offset + i. logit_scale: the multiplier of q . k (a tensor for a learned
    one, or a float). kind "infonce": softmax cross-entropy over the columns; "siglip": sum of pairwise
    sigmoid losses with logit_bias (required). chunk_rows: rows per chunk (0: C * B ~ 4M logits).
    Differentiable in q, k, logit_scale and logit_bias.
    """
    if kind not in KINDS:
        raise ValueError(f"clip_loss kind must be one of {KINDS}, got {kind!r}")
    if q_bD.dim() != 2 or k_BD.dim() != 2 or q_bD.shape[1] != k_BD.shape[1]:
        raise ValueError(f"clip_loss expects q (b, D) and k (B, D), got {tuple(q_bD.shape)} and {tuple(k_BD.shape)}")
    b, B = q_bD.shape[0], k_BD.shape[0]
    if not 0 <= offset <= B - b:
        raise ValueError(f"clip_loss: positives offset {offset} + {b} rows do not fit in {B} columns")
    if kind == "siglip" and logit_bias is None:
        raise ValueError("clip_loss kind='siglip' needs logit_bias")
    # a float becomes a 0-d fp32 tensor filled on the device (no host-to-device copy)
    as_tensor = lambda v: v if torch.is_tensor(v) else torch.full((), float(v), device=q_bD.device)
    scale = as_tensor(logit_scale)
    bias = as_tensor(logit_bias if logit_bias is not None else 0.0)
    chunk = chunk_rows if chunk_rows > 0 else max(1, CHUNK_ELEMENTS // max(B, 1))
    be = REGISTRATION.resolve("clip_loss", backend, q_bD)
    return _clip_loss_chunked(q_bD, k_BD, scale, bias, int(offset), kind == "siglip", int(chunk), be)[0]
