"""SwiGLU on the fused [gate | value] layout: y[..., :] = silu(x[..., :h]) * x[..., h:].

Forward and backward are elementwise Triton kernels over the (M, 2h) rows; every value is
upcast to fp32 before arithmetic and rounded to the input dtype on store.
"""

import torch
import triton
import triton.language as tl

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BLOCK = 1024


@triton.jit
def _swiglu_fwd_kernel(
    x_ptr,  # (M, 2h) input rows, row stride stride_xm, unit column stride
    y_ptr,  # (M, h) output, contiguous
    M,
    H,
    stride_xm,
    BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < M.to(tl.int64) * H  # M * H in int32 overflows past 2^31 elements (196k tokens at width 10.9k)
    row = idx // H
    col = idx % H
    gate = tl.load(x_ptr + row * stride_xm + col, mask=mask, other=0.0).to(tl.float32)
    value = tl.load(x_ptr + row * stride_xm + H + col, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * value
    tl.store(y_ptr + idx, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(
    x_ptr,  # (M, 2h) forward input, row stride stride_xm
    dy_ptr,  # (M, h) output gradient, contiguous
    dx_ptr,  # (M, 2h) input gradient, contiguous
    M,
    H,
    stride_xm,
    BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < M.to(tl.int64) * H  # M * H in int32 overflows past 2^31 elements (196k tokens at width 10.9k)
    row = idx // H
    col = idx % H
    gate = tl.load(x_ptr + row * stride_xm + col, mask=mask, other=0.0).to(tl.float32)
    value = tl.load(x_ptr + row * stride_xm + H + col, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(gate)
    dgate = dy * value * sig * (1.0 + gate * (1.0 - sig))
    dvalue = dy * gate * sig
    tl.store(dx_ptr + row * 2 * H + col, dgate.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dx_ptr + row * 2 * H + H + col, dvalue.to(dx_ptr.dtype.element_ty), mask=mask)


def _rows(x):
    """(..., 2h) -> (M, 2h) with a unit column stride (a copy only when the layout needs one)."""
    if x.dtype not in _DTYPES:
        raise ValueError(f"swiglu (triton) supports {_DTYPES}, got {x.dtype}")
    assert x.dim() and x.shape[-1] % 2 == 0, f"fastvit.ops.swiglu validates the even last dimension: {x.shape}"
    x_M2H = x.reshape(-1, x.shape[-1])
    if x_M2H.stride(-1) != 1:
        x_M2H = x_M2H.contiguous()
    return x_M2H


def swiglu_fwd(x):
    """x (..., 2h) -> silu(gate) * value (..., h)."""
    x_M2H = _rows(x)
    M, H = x_M2H.shape[0], x_M2H.shape[1] // 2
    y_MH = torch.empty((M, H), dtype=x.dtype, device=x.device)
    if M * H:
        _swiglu_fwd_kernel[(triton.cdiv(M * H, _BLOCK),)](x_M2H, y_MH, M, H, x_M2H.stride(0), BLOCK=_BLOCK)
    return y_MH.view(*x.shape[:-1], H)


def swiglu_bwd(dy, x):
    """Gradient of swiglu_fwd: dy (..., h), x (..., 2h) -> dx (..., 2h)."""
    x_M2H = _rows(x)
    M, H = x_M2H.shape[0], x_M2H.shape[1] // 2
    if tuple(dy.shape) != (*x.shape[:-1], H):
        raise ValueError(f"swiglu backward: dy shape {tuple(dy.shape)} does not match x shape {tuple(x.shape)}")
    dy_MH = dy.reshape(M, H).contiguous()
    dx_M2H = torch.empty((M, 2 * H), dtype=x.dtype, device=x.device)
    if M * H:
        _swiglu_bwd_kernel[(triton.cdiv(M * H, _BLOCK),)](x_M2H, dy_MH, dx_M2H, M, H, x_M2H.stride(0), BLOCK=_BLOCK)
    return dx_M2H.view(x.shape)


def launch_variants():
    """The forward and backward kernels for each dtype (BLOCK fixed, default 4 warps), for fastvit.kernels.aot."""
    from fastvit.kernels.aot import Variant, dtype_name, signature

    out = []
    for dtype in _DTYPES:
        for kind, fn in (("fwd", _swiglu_fwd_kernel), ("bwd", _swiglu_bwd_kernel)):
            ce = dict(BLOCK=_BLOCK)
            sig = signature(fn, ce, {a: dtype_name(dtype) for a in fn.arg_names if a.endswith("_ptr")})
            out.append(Variant(f"swiglu.{kind}.{dtype_name(dtype)}", fn, sig, ce, 4, 3))
    return out


def swiglu_ref(x):
    """Plain-torch reference: silu(x[..., :h]) * x[..., h:]."""
    gate, value = x.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * value


# True when this module was imported with TRITON_INTERPRET=1: the kernels then run on CPU tensors.
INTERPRETED = type(_swiglu_fwd_kernel).__name__ == "InterpretedFunction"
