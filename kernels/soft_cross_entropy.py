"""Row-wise soft-target cross-entropy: loss_R = -sum_k p_RK * log_softmax(s_RK / temp).

Forward: one streaming pass over K per row with an online logsumexp; writes loss, lse = logsumexp(s / temp)
and psum = sum_k p (both [R], fp32) so the backward needs no second reduction. log_softmax is never built.
Backward: one pass, grad_s = (softmax(s / temp) * psum - p) / temp * grad_loss and, when asked,
grad_p = (lse - s / temp) * grad_loss.
"""

import torch
import triton
import triton.language as tl

_NEG = -1.0e30  # finite "minus infinity" for masked lanes: exp(_NEG - m) == 0 and never NaN


@triton.jit
def _soft_ce_fwd_kernel(
    s_ptr,  # [R, K] student logits, any float dtype, last dim contiguous
    p_ptr,  # [R, K] teacher probabilities, any float dtype, last dim contiguous
    loss_ptr,  # [R] fp32 out: per-row loss
    lse_ptr,  # [R] fp32 out: logsumexp(s / temp)
    psum_ptr,  # [R] fp32 out: sum_k p
    K,
    stride_s,
    stride_p,
    inv_temp,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * stride_s
    p_row = p_ptr + row * stride_p
    m_vec = tl.full([BLOCK_K], _NEG, tl.float32)  # running max per lane
    l_vec = tl.zeros([BLOCK_K], tl.float32)  # running sum of exp(z - m_vec) per lane
    pz_vec = tl.zeros([BLOCK_K], tl.float32)  # sum p * z
    ps_vec = tl.zeros([BLOCK_K], tl.float32)  # sum p
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        mask = offs < K
        z = tl.load(s_row + offs, mask=mask, other=0.0).to(tl.float32) * inv_temp
        z = tl.where(mask, z, _NEG)
        p = tl.load(p_row + offs, mask=mask, other=0.0).to(tl.float32)
        m_new = tl.maximum(m_vec, z)
        l_vec = l_vec * tl.exp(m_vec - m_new) + tl.exp(z - m_new)
        m_vec = m_new
        pz_vec += tl.where(mask, p * z, 0.0)
        ps_vec += p
    m = tl.max(m_vec, axis=0)
    lse = m + tl.log(tl.sum(l_vec * tl.exp(m_vec - m), axis=0))
    psum = tl.sum(ps_vec, axis=0)
    tl.store(loss_ptr + row, psum * lse - tl.sum(pz_vec, axis=0))
    tl.store(lse_ptr + row, lse)
    tl.store(psum_ptr + row, psum)


@triton.jit
def _soft_ce_bwd_kernel(
    g_ptr,  # [R] fp32 upstream gradient of the per-row loss
    s_ptr,  # [R, K] student logits
    p_ptr,  # [R, K] teacher probabilities
    lse_ptr,  # [R] fp32 logsumexp(s / temp) from the forward
    psum_ptr,  # [R] fp32 sum_k p from the forward
    gs_ptr,  # [R, K] out: gradient w.r.t. s, dtype of s, contiguous
    gp_ptr,  # [R, K] out: gradient w.r.t. p, dtype of p, contiguous (unused unless GRAD_P)
    K,
    stride_s,
    stride_p,
    inv_temp,
    GRAD_P: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g = tl.load(g_ptr + row)
    lse = tl.load(lse_ptr + row)
    psum = tl.load(psum_ptr + row)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        mask = offs < K
        z = tl.load(s_ptr + row * stride_s + offs, mask=mask, other=0.0).to(tl.float32) * inv_temp
        p = tl.load(p_ptr + row * stride_p + offs, mask=mask, other=0.0).to(tl.float32)
        gs = (tl.exp(z - lse) * psum - p) * (inv_temp * g)
        tl.store(gs_ptr + row * K + offs, gs.to(gs_ptr.dtype.element_ty), mask=mask)
        if GRAD_P:
            tl.store(gp_ptr + row * K + offs, ((lse - z) * g).to(gp_ptr.dtype.element_ty), mask=mask)


INTERPRETED = type(_soft_ce_fwd_kernel).__name__ == "InterpretedFunction"  # defined under TRITON_INTERPRET=1


def _check(s_RK, p_RK, temp):
    if s_RK.dim() != 2 or p_RK.shape != s_RK.shape:
        raise ValueError(
            f"soft_cross_entropy expects student logits and teacher probs of the same [R, K] shape, "
            f"got {tuple(s_RK.shape)} and {tuple(p_RK.shape)}"
        )
    if not (s_RK.is_floating_point() and p_RK.is_floating_point()):
        raise ValueError(f"soft_cross_entropy expects float tensors, got {s_RK.dtype} and {p_RK.dtype}")
    if s_RK.device != p_RK.device:
        raise ValueError(f"soft_cross_entropy inputs on different devices: {s_RK.device} and {p_RK.device}")
    if not temp > 0:
        raise ValueError(f"soft_cross_entropy needs a positive temperature, got {temp}")


def _block_k(K):
    return min(triton.next_power_of_2(max(K, 16)), 4096)


def soft_cross_entropy_fwd_triton(s_RK, p_RK, temp):
    """Returns (loss_R, lse_R, psum_R), all fp32."""
    _check(s_RK, p_RK, temp)
    s_RK = s_RK if s_RK.stride(-1) == 1 else s_RK.contiguous()
    p_RK = p_RK if p_RK.stride(-1) == 1 else p_RK.contiguous()
    R, K = s_RK.shape
    out = [torch.empty(R, device=s_RK.device, dtype=torch.float32) for _ in range(3)]
    if R == 0:
        return tuple(out)
    if K == 0:
        raise ValueError("soft_cross_entropy needs at least one class (K = 0)")
    _soft_ce_fwd_kernel[(R,)](s_RK, p_RK, *out, K, s_RK.stride(0), p_RK.stride(0), 1.0 / temp, BLOCK_K=_block_k(K))
    return tuple(out)


def soft_cross_entropy_bwd_triton(g_R, s_RK, p_RK, lse_R, psum_R, temp, grad_p):
    """Returns (grad_s, grad_p or None) from the forward's saved lse and psum."""
    _check(s_RK, p_RK, temp)
    s_RK = s_RK if s_RK.stride(-1) == 1 else s_RK.contiguous()
    p_RK = p_RK if p_RK.stride(-1) == 1 else p_RK.contiguous()
    R, K = s_RK.shape
    gs = torch.empty((R, K), device=s_RK.device, dtype=s_RK.dtype)
    gp = torch.empty((R, K), device=p_RK.device, dtype=p_RK.dtype) if grad_p else gs
    if R and K:
        g_R = g_R.float().contiguous()
        _soft_ce_bwd_kernel[(R,)](
            g_R,
            s_RK,
            p_RK,
            lse_R,
            psum_R,
            gs,
            gp,
            K,
            s_RK.stride(0),
            p_RK.stride(0),
            1.0 / temp,
            GRAD_P=bool(grad_p),
            BLOCK_K=_block_k(K),
        )
    return gs, (gp if grad_p else None)


def soft_cross_entropy_ref(s_RK, p_RK, temp):
    """Plain torch, the straightforward way (fp32 compute, float64 stays float64)."""
    dt = torch.float64 if s_RK.dtype == torch.float64 else torch.float32
    return -(p_RK.to(dt) * torch.log_softmax(s_RK.to(dt) / temp, dim=-1)).sum(-1)
