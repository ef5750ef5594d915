"""Log-domain Sinkhorn-Knopp passes on factored teacher logits z[r, k] = x[r] . w[k] / temp (R rows, K prototypes).

Sinkhorn-Knopp in log space only needs two reductions, each recomputing the [BLOCK_R, BLOCK_K] logits tiles with
tl.dot (no [R, K] tensor is ever built, and nothing can overflow or underflow: every exponent is taken after its
own running maximum):
    prototype pass  out[k] = logsumexp_r(z[r, k] + bias[r])   grid (cdiv(K, BLOCK_K),), a loop over row blocks
    row pass        out[r] = logsumexp_k(z[r, k] + bias[k])   grid (cdiv(R, BLOCK_R), cdiv(K, BLOCK_K)): one tile
                    per program (so that 64 CLS rows still fill a GPU), partial (max, sum) folded on the host
Cross-rank reductions happen in torch between the passes (fastvit.ops.sinkhorn).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _logits_tile(
    x_ptr,
    offs_r,
    mask_r,
    w_ptr,
    offs_k,
    mask_k,
    D,
    inv_temp,
    DC: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    """fp32 tile x[offs_r] @ w[offs_k]^T * inv_temp (rows of D contiguous values), DC columns of D per dot."""
    acc = tl.zeros([offs_r.shape[0], offs_k.shape[0]], tl.float32)
    for d0 in range(0, D, DC):
        offs_d = d0 + tl.arange(0, DC)
        mask_d = offs_d < D
        x = tl.load(x_ptr + offs_r[:, None] * D + offs_d[None, :], mask=mask_r[:, None] & mask_d[None, :], other=0.0)
        w = tl.load(w_ptr + offs_k[:, None] * D + offs_d[None, :], mask=mask_k[:, None] & mask_d[None, :], other=0.0)
        if UPCAST:  # the interpreter multiplies raw bf16 bits
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(x, tl.trans(w), input_precision=PREC)
    return acc * inv_temp


@triton.jit
def _sk_prototype_lse_kernel(
    x_ptr,  # [R, D] teacher features, contiguous
    w_ptr,  # [K, D] teacher prototypes, contiguous, dtype of x
    bias_ptr,  # [R] fp32 per-row log scale
    out_ptr,  # [K] fp32 out: logsumexp_r(z[r, k] + bias[r])
    R,
    K,
    D,
    inv_temp,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DC: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    offs_k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    mask_k = offs_k < K
    m = tl.full([BLOCK_K], -1.0e30, tl.float32)  # running max; every row block holds a valid row
    acc = tl.zeros([BLOCK_K], tl.float32)  # running sum of exp(z - m)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask_r = offs_r < R
        z = _logits_tile(x_ptr, offs_r, mask_r, w_ptr, offs_k, mask_k, D, inv_temp, DC, UPCAST, PREC)
        z = tl.where(mask_r[:, None], z + tl.load(bias_ptr + offs_r, mask=mask_r, other=0.0)[:, None], -1.0e30)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        acc = acc * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[None, :]), axis=0)
        m = m_new
    tl.store(out_ptr + offs_k, m + tl.log(acc), mask=mask_k)


@triton.jit
def _sk_row_lse_kernel(
    x_ptr,  # [R, D] teacher features, contiguous
    w_ptr,  # [K, D] teacher prototypes, contiguous, dtype of x
    bias_ptr,  # [K] fp32 per-prototype log scale
    m_ptr,  # [NK, R] fp32 out: max over the K-tile of z + bias
    l_ptr,  # [NK, R] fp32 out: sum over the K-tile of exp(z + bias - max)
    R,
    K,
    D,
    inv_temp,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DC: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
):
    offs_r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    mask_r = offs_r < R
    kt = tl.program_id(1).to(tl.int64)
    offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    mask_k = offs_k < K
    z = _logits_tile(x_ptr, offs_r, mask_r, w_ptr, offs_k, mask_k, D, inv_temp, DC, UPCAST, PREC)
    z = tl.where(mask_k[None, :], z + tl.load(bias_ptr + offs_k, mask=mask_k, other=0.0)[None, :], -1.0e30)
    m = tl.max(z, axis=1)
    tl.store(m_ptr + kt * R + offs_r, m, mask=mask_r)
    tl.store(l_ptr + kt * R + offs_r, tl.sum(tl.exp(z - m[:, None]), axis=1), mask=mask_r)


INTERPRETED = type(_sk_row_lse_kernel).__name__ == "InterpretedFunction"  # defined under TRITON_INTERPRET=1

_DC = 64  # columns of D per dot
# GPU tiles (BLOCK_R, BLOCK_K, num_warps) for bf16 / fp16 and (smaller: fp32 operands hold twice the registers)
# fp32 operands, each spill-free on sm_80 / sm_90a (fastvit.kernels.aot); the interpreter runs one larger tile.
_TILES = {
    "prototype_lse": {"low": (64, 64, 8), "fp32": (32, 64, 8)},
    "row_lse": {"low": (64, 64, 8), "fp32": (32, 64, 8)},
}
_INTERPRETER_TILE = (64, 64, 4)


def _tile(kind, dtype):
    r, k, w = _INTERPRETER_TILE if INTERPRETED else _TILES[kind]["fp32" if dtype == torch.float32 else "low"]
    return {"BLOCK_R": r, "BLOCK_K": k, "num_warps": w, "num_stages": 2}


def dot_precision_of(dtype):
    """fp32 dots in full precision (torch's default, no TF32): t / 0.04 turns TF32's 1e-3 into exponent error."""
    return "ieee" if dtype == torch.float32 else "tf32"


def dot_precision(x):
    return dot_precision_of(x.dtype)


def _check(x_RD, w_KD, bias, n_bias, name):
    if x_RD.dim() != 2 or w_KD.dim() != 2 or x_RD.shape[1] != w_KD.shape[1]:
        shapes = f"{tuple(x_RD.shape)}, {tuple(w_KD.shape)}"
        raise ValueError(f"sinkhorn {name}: features [R, D] and prototypes [K, D], got {shapes}")
    if bias.shape != (n_bias,) or bias.dtype != torch.float32:
        raise ValueError(f"sinkhorn {name}: bias must be fp32 [{n_bias}], got {bias.dtype} {tuple(bias.shape)}")
    if x_RD.dtype != w_KD.dtype:
        raise ValueError(f"sinkhorn {name}: features {x_RD.dtype} and prototypes {w_KD.dtype} differ")
    return x_RD.contiguous(), w_KD.contiguous(), bias.contiguous()


def _meta(x, kind):
    return dict(DC=_DC, UPCAST=INTERPRETED, PREC=dot_precision(x), **_tile(kind, x.dtype))


def sinkhorn_prototype_lse_triton(x_RD, w_KD, bias_R, temp):
    """[K] fp32 logsumexp over rows of x w^T / temp + bias_R[:, None] (-inf for R = 0)."""
    x, w, bias = _check(x_RD, w_KD, bias_R, x_RD.shape[0], "prototype pass")
    (R, D), K = x.shape, w.shape[0]
    out = torch.full((K,), float("-inf"), device=x.device)
    if R and K:
        meta = _meta(x, "prototype_lse")
        _sk_prototype_lse_kernel[(triton.cdiv(K, meta["BLOCK_K"]),)](x, w, bias, out, R, K, D, 1.0 / temp, **meta)
    return out


def sinkhorn_row_lse_triton(x_RD, w_KD, bias_K, temp):
    """[R] fp32 logsumexp over prototypes of x w^T / temp + bias_K[None, :]."""
    x, w, bias = _check(x_RD, w_KD, bias_K, w_KD.shape[0], "row pass")
    (R, D), K = x.shape, w.shape[0]
    if not (R and K):
        return torch.full((R,), float("-inf"), device=x.device)
    meta = _meta(x, "row_lse")
    nk = triton.cdiv(K, meta["BLOCK_K"])
    m, l = (torch.empty(nk, R, device=x.device) for _ in range(2))
    _sk_row_lse_kernel[(triton.cdiv(R, meta["BLOCK_R"]), nk)](x, w, bias, m, l, R, K, D, 1.0 / temp, **meta)
    m_max = m.amax(0)
    return m_max + torch.log((l * torch.exp(m - m_max)).sum(0))


def sinkhorn_knopp_ref(t_BK, temp, n_iters=3, n_rows=None, all_reduce=None):
    """DINOv2's written definition on materialised logits: Q = exp(t / temp)^T [K, B] (fp32; float64 stays float64).

    The tests' oracle, in float64. all_reduce(tensor, op) sums (op="sum") or maxes (op="max") in place across
    ranks; None = one process. n_rows: the global row count B_global (default: local rows, i.e. one process).
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


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def launch_variants():
    """Every (pass, dtype) the wrappers can launch on a GPU, for fastvit.kernels.aot."""
    from fastvit.kernels.aot import Variant, dtype_name, signature

    out = []
    for dtype in _DTYPES:
        ty = dtype_name(dtype)
        for kind, fn in (("prototype_lse", _sk_prototype_lse_kernel), ("row_lse", _sk_row_lse_kernel)):
            r, k, warps = _TILES[kind]["fp32" if dtype == torch.float32 else "low"]
            ce = dict(BLOCK_R=r, BLOCK_K=k, DC=_DC, UPCAST=False, PREC=dot_precision_of(dtype))
            ptrs = {a: (ty if a in ("x_ptr", "w_ptr") else "fp32") for a in fn.arg_names if a.endswith("_ptr")}
            sig = signature(fn, ce, ptrs, fp32=("inv_temp",))
            out.append(Variant(f"sinkhorn.{kind}.{ty}", fn, sig, ce, warps, 2))
    return out
