"""Streaming Sinkhorn-Knopp passes over teacher logits t [B, K] (B local rows, K prototypes).

The balanced assignment is kept in factored form, P[b, k] = E[b, k] * r[k] * c[b] with E = exp(t / temp - shift)
(shift = the global max of t / temp, which cancels in the normalisations), so no [B, K] temporary is ever built.
Each pass re-reads t and recomputes E on the fly:
    prototype_sums: A[k] = sum_b E[b, k] * c[b]   (grid over prototype blocks, loop over rows)
    row_sums:       C[b] = sum_k E[b, k] * r[k]   (grid over row blocks, loop over prototypes)
    apply:          P[b, k] = E[b, k] * r[k] * c[b]
Cross-rank all-reduces happen in torch between the passes (fastvit.ops.sinkhorn).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _sk_prototype_sums_kernel(
    t_ptr,  # [B, K] teacher logits, any float dtype, last dim contiguous
    c_ptr,  # [B] fp32 row scales
    shift_ptr,  # [1] fp32 global max of t / temp
    out_ptr,  # [K] fp32 out: sum_b exp(t / temp - shift) * c
    B,
    K,
    stride_t,
    inv_temp,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    mask_k = offs_k < K
    shift = tl.load(shift_ptr)
    acc = tl.zeros([BLOCK_K], tl.float32)
    for b0 in range(0, B, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
        mask_b = offs_b < B
        mask = mask_b[:, None] & mask_k[None, :]
        t = tl.load(t_ptr + offs_b[:, None] * stride_t + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + offs_b, mask=mask_b, other=0.0)
        e = tl.where(mask, tl.exp(t * inv_temp - shift), 0.0)
        acc += tl.sum(e * c[:, None], axis=0)
    tl.store(out_ptr + offs_k, acc, mask=mask_k)


@triton.jit
def _sk_row_sums_kernel(
    t_ptr,  # [B, K] teacher logits, any float dtype, last dim contiguous
    r_ptr,  # [K] fp32 prototype scales
    shift_ptr,  # [1] fp32 global max of t / temp
    out_ptr,  # [B] fp32 out: sum_k exp(t / temp - shift) * r
    B,
    K,
    stride_t,
    inv_temp,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    mask_b = offs_b < B
    shift = tl.load(shift_ptr)
    acc = tl.zeros([BLOCK_B], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        mask_k = offs_k < K
        mask = mask_b[:, None] & mask_k[None, :]
        t = tl.load(t_ptr + offs_b[:, None] * stride_t + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + offs_k, mask=mask_k, other=0.0)
        e = tl.where(mask, tl.exp(t * inv_temp - shift), 0.0)
        acc += tl.sum(e * r[None, :], axis=1)
    tl.store(out_ptr + offs_b, acc, mask=mask_b)


@triton.jit
def _sk_apply_kernel(
    t_ptr,  # [B, K] teacher logits, any float dtype, last dim contiguous
    r_ptr,  # [K] fp32 prototype scales
    c_ptr,  # [B] fp32 row scales
    shift_ptr,  # [1] fp32 global max of t / temp
    out_ptr,  # [B, K] fp32 out, contiguous: exp(t / temp - shift) * r * c
    B,
    K,
    stride_t,
    inv_temp,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    offs_b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    offs_k = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    mask = (offs_b < B)[:, None] & (offs_k < K)[None, :]
    t = tl.load(t_ptr + offs_b[:, None] * stride_t + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs_k, mask=offs_k < K, other=0.0)
    c = tl.load(c_ptr + offs_b, mask=offs_b < B, other=0.0)
    p = tl.exp(t * inv_temp - tl.load(shift_ptr)) * r[None, :] * c[:, None]
    tl.store(out_ptr + offs_b[:, None] * K + offs_k[None, :], p, mask=mask)


_BLOCK_B, _BLOCK_K = 16, 256


INTERPRETED = type(_sk_prototype_sums_kernel).__name__ == "InterpretedFunction"  # defined under TRITON_INTERPRET=1


def _check(t_BK, scale, n_scale, name):
    if t_BK.dim() != 2:
        raise ValueError(f"sinkhorn {name}: teacher logits must be [B, K], got {tuple(t_BK.shape)}")
    if not t_BK.is_floating_point():
        raise ValueError(f"sinkhorn {name}: teacher logits must be floating point, got {t_BK.dtype}")
    if scale.shape != (n_scale,) or scale.dtype != torch.float32:
        raise ValueError(f"sinkhorn {name}: scale must be fp32 [{n_scale}], got {scale.dtype} {tuple(scale.shape)}")
    return t_BK if t_BK.stride(-1) == 1 else t_BK.contiguous()


def sinkhorn_prototype_sums_triton(t_BK, c_B, shift, temp):
    t_BK = _check(t_BK, c_B, t_BK.shape[0], "prototype_sums")
    B, K = t_BK.shape
    out = torch.zeros(K, device=t_BK.device, dtype=torch.float32)
    if B and K:
        grid = (triton.cdiv(K, _BLOCK_K),)
        _sk_prototype_sums_kernel[grid](
            t_BK, c_B, shift, out, B, K, t_BK.stride(0), 1.0 / temp, BLOCK_B=_BLOCK_B, BLOCK_K=_BLOCK_K
        )
    return out


def sinkhorn_row_sums_triton(t_BK, r_K, shift, temp):
    t_BK = _check(t_BK, r_K, t_BK.shape[1], "row_sums")
    B, K = t_BK.shape
    out = torch.zeros(B, device=t_BK.device, dtype=torch.float32)
    if B and K:
        grid = (triton.cdiv(B, _BLOCK_B),)
        _sk_row_sums_kernel[grid](
            t_BK, r_K, shift, out, B, K, t_BK.stride(0), 1.0 / temp, BLOCK_B=_BLOCK_B, BLOCK_K=_BLOCK_K
        )
    return out


def sinkhorn_apply_triton(t_BK, r_K, c_B, shift, temp):
    t_BK = _check(t_BK, r_K, t_BK.shape[1], "apply")
    _check(t_BK, c_B, t_BK.shape[0], "apply")
    B, K = t_BK.shape
    out = torch.empty((B, K), device=t_BK.device, dtype=torch.float32)
    if B and K:
        grid = (triton.cdiv(B, _BLOCK_B), triton.cdiv(K, _BLOCK_K))
        _sk_apply_kernel[grid](
            t_BK, r_K, c_B, shift, out, B, K, t_BK.stride(0), 1.0 / temp, BLOCK_B=_BLOCK_B, BLOCK_K=_BLOCK_K
        )
    return out


def sinkhorn_knopp_ref(t_BK, temp, n_iters=3, n_rows=None, all_reduce=None):
    """The written definition, materialising Q = exp(t / temp)^T [K, B] (fp32; float64 stays float64).

    all_reduce(tensor, op) sums (op="sum") or maxes (op="max") in place across ranks; None = one process.
    n_rows: the global row count B_global (default: local rows, i.e. one process).
    """
    reduce = all_reduce or (lambda x, op: x)
    dt = torch.float64 if t_BK.dtype == torch.float64 else torch.float32
    z = t_BK.to(dt) / temp
    shift = z.max() if z.numel() else torch.tensor(float("-inf"), dtype=dt, device=z.device)
    reduce(shift, "max")  # exp(z - shift): the global normalisation below cancels the constant
    Q = torch.exp(z - shift).t()  # [K, B]
    K = Q.shape[0]
    n_rows = Q.shape[1] if n_rows is None else n_rows
    total = Q.sum()
    reduce(total, "sum")
    Q = Q / total
    for _ in range(n_iters):
        proto = Q.sum(dim=1, keepdim=True)  # [K, 1]
        reduce(proto, "sum")
        Q = Q / proto / K
        Q = Q / Q.sum(dim=0, keepdim=True) / n_rows
    return (Q * n_rows).t()
