"""LayerNorm over the last dimension, optionally fused with the residual add (pre-norm blocks).

Forward: one row per program; s = x (+ residual), y = (s - mean) * rstd * w + b, saving the
fp32 mean and rstd of every row (and s when a residual is added). Backward: each program walks
a group of rows, writes dx and accumulates fp32 partial dweight / dbias; the (G, N) partials are
summed in a second step.
"""

import torch
import triton
import triton.language as tl

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _ln_fwd_kernel(
    x_ptr,  # (M, N) input rows, row stride stride_xm
    res_ptr,  # (M, N) residual rows, row stride stride_rm (unused unless HAS_RES)
    w_ptr,  # (N,) weight
    b_ptr,  # (N,) bias
    y_ptr,  # (M, N) normalised output, contiguous
    s_ptr,  # (M, N) x + residual, contiguous (unused unless HAS_RES)
    mean_ptr,  # (M,) fp32 row means
    rstd_ptr,  # (M,) fp32 row 1/std
    N,
    stride_xm,
    stride_rm,
    eps,
    HAS_RES: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + row * stride_xm + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(res_ptr + row * stride_rm + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(s_ptr + row * N + cols, x.to(s_ptr.dtype.element_ty), mask=mask)
        x = tl.load(s_ptr + row * N + cols, mask=mask, other=0.0).to(tl.float32)  # normalise the rounded sum
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * N + cols, (xc * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _ln_bwd_kernel(
    dy_ptr,  # (M, N) output gradient, contiguous
    x_ptr,  # (M, N) normalised input (s for add_layer_norm), row stride stride_xm
    w_ptr,  # (N,) weight
    mean_ptr,  # (M,) fp32 row means
    rstd_ptr,  # (M,) fp32 row 1/std
    dres_ptr,  # (M, N) gradient flowing into s directly, contiguous (unused unless HAS_DRES)
    dx_ptr,  # (M, N) input gradient, contiguous
    dw_ptr,  # (G, N) fp32 partial weight gradients, one row per program
    db_ptr,  # (G, N) fp32 partial bias gradients, one row per program
    M,
    N,
    stride_xm,
    rows_per_prog,
    HAS_DRES: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for i in range(0, rows_per_prog):
        row = pid * rows_per_prog + i
        mask = cols < tl.where(row < M, N, 0)  # whole row masked off past the last row
        x = tl.load(x_ptr + row * stride_xm + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + tl.minimum(row, M - 1))
        rstd = tl.load(rstd_ptr + tl.minimum(row, M - 1))
        xhat = tl.where(mask, (x - mean) * rstd, 0.0)
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=0) / N
        c2 = tl.sum(wdy, axis=0) / N
        dx = (wdy - (xhat * c1 + c2)) * rstd
        if HAS_DRES:
            dx += tl.load(dres_ptr + row * N + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + row * N + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw += dy * xhat
        db += dy
    tl.store(dw_ptr + pid * N + cols, dw, mask=col_mask)
    tl.store(db_ptr + pid * N + cols, db, mask=col_mask)


def _rows(name, t, n):
    """(..., N) -> (M, N) with a unit column stride (a copy only when the layout needs one)."""
    if t.dtype not in _DTYPES:
        raise ValueError(f"layer_norm (triton): {name} dtype must be one of {_DTYPES}, got {t.dtype}")
    if t.dim() == 0 or t.shape[-1] != n:
        raise ValueError(f"layer_norm (triton): {name} must end in the normalised width {n}, got {tuple(t.shape)}")
    t_MN = t.reshape(-1, n)
    return t_MN if t_MN.stride(-1) == 1 else t_MN.contiguous()


def _check_params(x, weight, bias):
    n = x.shape[-1]
    assert weight.shape == bias.shape == (n,), "fastvit.ops.layer_norm validates the parameters' shapes"
    if n > MAX_WIDTH:
        raise ValueError(f"layer_norm (triton) supports widths up to {MAX_WIDTH}, got {n}")


def layer_norm_fwd(x, weight, bias, eps, residual=None):
    """Returns (y, s, mean_M, rstd_M) with s = x + residual (None without a residual). x, residual, weight
    and bias may each have their own dtype (autocast: bf16 activations, fp32 parameters); s and y take the
    promoted dtype of x and residual, the statistics are fp32."""
    _check_params(x, weight, bias)
    n = x.shape[-1]
    x_MN = _rows("x", x, n)
    res_MN = None if residual is None else _rows("residual", residual, n)
    assert res_MN is None or res_MN.shape == x_MN.shape, "fastvit.ops.add_layer_norm validates the residual's shape"
    M = x_MN.shape[0]
    dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)  # s and y, as in torch
    y_MN = torch.empty((M, n), dtype=dtype, device=x.device)
    s_MN = torch.empty_like(y_MN) if res_MN is not None else None
    mean_M = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd_M = torch.empty_like(mean_M)
    if M:
        _ln_fwd_kernel[(M,)](
            x_MN,
            res_MN if res_MN is not None else x_MN,
            weight,
            bias,
            y_MN,
            s_MN if s_MN is not None else y_MN,
            mean_M,
            rstd_M,
            n,
            x_MN.stride(0),
            res_MN.stride(0) if res_MN is not None else 0,
            eps,
            HAS_RES=res_MN is not None,
            BLOCK_N=triton.next_power_of_2(n),
            num_warps=_warps(n),
        )
    s = None if s_MN is None else s_MN.view(x.shape)
    return y_MN.view(x.shape), s, mean_M, rstd_M


def _warps(n):
    return min(max(triton.next_power_of_2(n) // 256, 1), 16)


def _bwd_warps(n):
    """The backward holds about twice the forward's row state per thread (x, dy, w and the dw / db partials): twice
    its warps. On 4 warps the n1024 backward spilled 24 bytes on sm_90a (ptxas settled on 80 registers); on 8 it
    holds 61 registers, no spill (python -m fastvit.kernels.aot)."""
    return min(2 * _warps(n), 16)


def _num_groups(M, device):
    if device.type == "cuda":
        return min(M, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(M, 4)  # the interpreter runs programs one after another: few and wide is fastest


def layer_norm_bwd(dy, x, weight, mean_M, rstd_M, dres=None):
    """Gradients of layer_norm_fwd: returns (dx, dweight, dbias); dres (if given) is added to dx. dx has the
    dtype of x, dweight and dbias that of weight (summed in fp32); dy and dres may be of any float dtype."""
    n = x.shape[-1]
    x_MN = _rows("x", x, n)
    M = x_MN.shape[0]
    dy_MN = _rows("dy", dy, n).contiguous()
    dres_MN = None if dres is None else _rows("dres", dres, n).contiguous()
    if dy_MN.shape != x_MN.shape:
        raise ValueError(f"layer_norm backward: dy shape {tuple(dy.shape)} != x shape {tuple(x.shape)}")
    dx_MN = torch.empty((M, n), dtype=x.dtype, device=x.device)
    G = max(_num_groups(M, x.device), 1)
    dw_GN = torch.zeros((G, n), dtype=torch.float32, device=x.device)
    db_GN = torch.zeros_like(dw_GN)
    if M:
        _ln_bwd_kernel[(G,)](
            dy_MN,
            x_MN,
            weight,
            mean_M,
            rstd_M,
            dres_MN if dres_MN is not None else dy_MN,
            dx_MN,
            dw_GN,
            db_GN,
            M,
            n,
            x_MN.stride(0),
            triton.cdiv(M, G),
            HAS_DRES=dres_MN is not None,
            BLOCK_N=triton.next_power_of_2(n),
            num_warps=_bwd_warps(n),
        )
    return dx_MN.view(x.shape), dw_GN.sum(0).to(weight.dtype), db_GN.sum(0).to(weight.dtype)


# A program keeps a whole row in registers (fwd: x, w, b; bwd: x, dy, w and the dw / db partials), on at most
# 16 warps: at 8192 columns the backward spills on sm_80 and sm_90a (tests/kernels/test_compile.py), at 4096 (ViT-7B)
# it holds 112 registers. fastvit.ops.layer_norm runs wider rows on torch.
MAX_WIDTH = 4096
_BLOCKS = tuple(2**i for i in range(MAX_WIDTH.bit_length()))  # BLOCK_N = next_power_of_2(width)


def launch_variants():
    """Forward and backward for every BLOCK_N (with its num_warps), with and without the residual, for x in each dtype
    with weights in x's dtype or fp32 (a bf16 model, or fp32 weights under autocast), for fastvit.kernels.aot."""
    from fastvit.kernels.aot import Variant, dtype_name, signature

    out = []
    for x_dt in map(dtype_name, _DTYPES):
        for w_dt in sorted({x_dt, "fp32"}):
            ptrs = {a: x_dt for a in ("x_ptr", "res_ptr", "y_ptr", "s_ptr", "dy_ptr", "dres_ptr", "dx_ptr")}
            ptrs.update({a: "fp32" for a in ("mean_ptr", "rstd_ptr", "dw_ptr", "db_ptr")}, w_ptr=w_dt, b_ptr=w_dt)
            for kind, fn, flag in (("fwd", _ln_fwd_kernel, "HAS_RES"), ("bwd", _ln_bwd_kernel, "HAS_DRES")):
                for res in (False, True):
                    for block in _BLOCKS:
                        ce = {flag: res, "BLOCK_N": block}
                        sig = signature(fn, ce, {a: ptrs[a] for a in fn.arg_names if a.endswith("_ptr")}, ("eps",))
                        name = f"layer_norm.{kind}.{x_dt}.w_{w_dt}.{'res' if res else 'plain'}.n{block}"
                        warps = _warps(block) if kind == "fwd" else _bwd_warps(block)
                        out.append(Variant(name, fn, sig, ce, warps, 3))
    return out


def layer_norm_ref(x, weight, bias, eps):
    """Plain-torch reference LayerNorm over the last dimension."""
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def add_layer_norm_ref(x, residual, weight, bias, eps):
    """Plain-torch reference: (layer_norm(x + residual), x + residual)."""
    s = x + residual
    return layer_norm_ref(s, weight, bias, eps), s


# True when this module was imported with TRITON_INTERPRET=1: the kernels then run on CPU tensors.
INTERPRETED = type(_ln_fwd_kernel).__name__ == "InterpretedFunction"
