"""Contrastive losses (InfoNCE, SigLIP) of local rows against gathered columns, loss and gradients per chunk.

Rows q (b, D) (e.g. this rank's image embeddings) meet columns k (B, D) (all ranks' text embeddings);
row i's positive is column i + offset. With l_ij = scale * q_i . k_j (+ bias for SigLIP):
    InfoNCE: loss_i = logsumexp_j l_ij - l_i,i+offset            dl_ij = softmax_j(l_i)_j - [j == i + offset]
    SigLIP:  loss_i = sum_j softplus(-z_ij l_ij), z = +1 / -1    dl_ij = -z_ij sigmoid(-z_ij l_ij)
The chunked driver (fastvit/ops/clip_loss.py) forms one (C, B) block of dot products at a time with a
matmul; `clip_rows_triton` turns the block in place into dl (one program per row, two streaming passes
for InfoNCE, one for SigLIP) and writes per-row loss, sum_j dl_ij * dot_ij (for d scale) and sum_j dl_ij
(for d bias). The (b, B) logits matrix is never held at once.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for masked lanes (a constexpr: @jit reads no other globals)


@triton.jit
def _clip_rows_kernel(
    dot_ptr,  # (C, B) fp32 in: q . k dot products; out: dL/dl (in place), row stride stride_d, unit column stride
    loss_ptr,  # (C,) fp32 out: per-row loss
    dsc_ptr,  # (C,) fp32 out: sum_j dl_ij * dot_ij
    dbi_ptr,  # (C,) fp32 out: sum_j dl_ij
    scale_ptr,  # () fp32 logit scale
    bias_ptr,  # () fp32 logit bias (SigLIP; ignored otherwise)
    B,
    stride_d,
    target_start,
    SIGLIP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = dot_ptr + row * stride_d
    target = target_start + row
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr)
    offs0 = tl.arange(0, BLOCK).to(tl.int64)
    lse = 0.0
    loss_vec = tl.zeros([BLOCK], tl.float32)
    if not SIGLIP:  # pass 1: logsumexp of the row and its positive logit
        m_vec = tl.full([BLOCK], _NEG, tl.float32)
        s_vec = tl.zeros([BLOCK], tl.float32)
        for c0 in range(0, B, BLOCK):
            offs = c0 + offs0
            valid = offs < B
            lg = tl.where(valid, tl.load(base + offs, mask=valid, other=0.0) * scale, _NEG)
            m_new = tl.maximum(m_vec, lg)
            s_vec = s_vec * tl.exp(m_vec - m_new) + tl.exp(lg - m_new)
            m_vec = m_new
            loss_vec -= tl.where(offs == target, lg, 0.0)
        m = tl.max(m_vec, axis=0)
        lse = m + tl.log(tl.sum(s_vec * tl.exp(m_vec - m), axis=0))
    dsc_vec = tl.zeros([BLOCK], tl.float32)
    dbi_vec = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, B, BLOCK):  # pass 2 (SigLIP: the only pass): gradient in place
        offs = c0 + offs0
        valid = offs < B
        dot = tl.load(base + offs, mask=valid, other=0.0)
        lg = dot * scale
        pos = offs == target
        if SIGLIP:
            lg = lg + bias
            x = tl.where(pos, -lg, lg)  # -z * l
            loss_vec += tl.where(valid, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))), 0.0)
            sig = 1.0 / (1.0 + tl.exp(-x))
            dl = tl.where(pos, -sig, sig)
        else:
            dl = tl.exp(lg - lse) - tl.where(pos, 1.0, 0.0)
        dl = tl.where(valid, dl, 0.0)
        tl.store(base + offs, dl, mask=valid)
        dsc_vec += dl * dot
        dbi_vec += dl
    tl.store(loss_ptr + row, tl.sum(loss_vec, axis=0) + lse)
    tl.store(dsc_ptr + row, tl.sum(dsc_vec, axis=0))
    tl.store(dbi_ptr + row, tl.sum(dbi_vec, axis=0))


def _check_block(dot_CB, scale, bias):
    if dot_CB.dim() != 2 or dot_CB.dtype != torch.float32 or dot_CB.stride(-1) != 1:
        raise ValueError(
            f"clip_rows expects a (C, B) fp32 block with unit column stride, got {dot_CB.dtype} "
            f"{tuple(dot_CB.shape)} strides {dot_CB.stride()}"
        )
    for name, t in (("scale", scale), ("bias", bias)):
        if t.numel() != 1 or t.dtype != torch.float32:
            raise ValueError(f"clip_rows: {name} must be a one-element fp32 tensor, got {t.dtype} {tuple(t.shape)}")


def clip_rows_triton(dot_CB, scale, bias, target_start, siglip):
    """In place: dot_CB (C, B) fp32 -> dL/dl. Returns (loss_C, dscale_C, dbias_C) fp32 row sums."""
    _check_block(dot_CB, scale, bias)
    C, B = dot_CB.shape
    loss, dsc, dbi = (torch.empty(C, dtype=torch.float32, device=dot_CB.device) for _ in range(3))
    if C:
        block = _block(B)
        _clip_rows_kernel[(C,)](
            dot_CB,
            loss,
            dsc,
            dbi,
            scale,
            bias,
            B,
            dot_CB.stride(0),
            int(target_start),
            SIGLIP=bool(siglip),
            BLOCK=block,
        )
    return loss, dsc, dbi


_BLOCKS = tuple(2**i for i in range(4, 11))  # 16 ... 1024 columns per step of a row's streaming passes


def _block(B):
    return min(_BLOCKS[-1], triton.next_power_of_2(max(B, _BLOCKS[0])))


def launch_variants():
    """Every (SIGLIP, BLOCK) clip_rows_triton can launch on a GPU, for fastvit.kernels.aot (default 4 warps)."""
    from fastvit.kernels.aot import Variant, signature

    fn, out = _clip_rows_kernel, []
    ptrs = {a: "fp32" for a in fn.arg_names if a.endswith("_ptr")}
    for siglip in (False, True):
        for block in _BLOCKS:
            ce = dict(SIGLIP=siglip, BLOCK=block)
            name = f"clip_loss.rows.{'siglip' if siglip else 'infonce'}.b{block}"
            out.append(Variant(name, fn, signature(fn, ce, ptrs), ce, 4, 3))
    return out


def clip_rows_torch(dot_CB, scale, bias, target_start, siglip):
    """The same block step in torch, in place where it can be (two (C, B) temporaries at most)."""
    _check_block(dot_CB, scale, bias)
    C, B = dot_CB.shape
    r = torch.arange(C, device=dot_CB.device)
    t = r + int(target_start)
    lg = dot_CB * scale
    if siglip:
        lg += bias
        lg[r, t] *= -1.0  # now x = -z * l
        loss = F.softplus(lg).sum(1)
        dl = lg.sigmoid_()
        dl[r, t] *= -1.0
    else:
        lse = torch.logsumexp(lg, dim=1)
        loss = lse - lg[r, t]
        dl = lg.sub_(lse[:, None]).exp_()
        dl[r, t] -= 1.0
    dsc, dbi = (dl * dot_CB).sum(1), dl.sum(1)
    dot_CB.copy_(dl)
    return loss, dsc, dbi


def clip_loss_ref(q_bD, k_BD, scale, offset, bias=None, siglip=False):
    """Plain-torch reference (the whole (b, B) logits matrix): mean over rows of the per-row loss."""
    lg = scale * q_bD @ k_BD.t()
    target = torch.arange(q_bD.shape[0], device=q_bD.device) + offset
    if siglip:
        z = -torch.ones_like(lg)
        z[torch.arange(lg.shape[0]), target] = 1.0
        return -F.logsigmoid(z * (lg + bias)).sum(1).mean()
    return F.cross_entropy(lg, target)


# True when this module was imported with TRITON_INTERPRET=1: the kernels then run on CPU tensors.
INTERPRETED = type(_clip_rows_kernel).__name__ == "InterpretedFunction"
