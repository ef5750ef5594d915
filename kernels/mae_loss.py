"""Web-MAE pixel loss in one pass: patchify + per-patch normalisation + masked MSE, and its gradient.

For image b and patch n (row-major on the (H/p, W/p) grid), the target is the patch's pixels in
MAE's (row, column, channel) order, P = p * p * 3 values; with norm_pix they are normalised by the
patch's own mean and unbiased variance: t = (x - mean) / sqrt(var + eps). Then
    loss_BN[b, n] = mask[b, n] * mean_P (pred[b, n] - t)^2
and the gradient of sum(g_BN * loss_BN) w.r.t. pred is g * mask * 2 / P * (pred - t). The images
are read in place (any strides); no patchified copy of them is made. One program per patch; the
unmasked patches load nothing.
"""

import torch
import triton
import triton.language as tl

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _patch_target(
    img_ptr,  # (B, 3, H, W) images, any strides
    b,
    n,
    GW,
    P,
    p,
    s_ib,
    s_ic,
    s_ih,
    s_iw,
    eps,
    n_load,
    NORM: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """(target (BLOCK_P,) fp32, lane mask) of patch n of image b; n_load is P, or 0 to load nothing."""
    j = tl.arange(0, BLOCK_P).to(tl.int64)
    lanes = j < n_load
    c = j % 3
    col = (j // 3) % p
    row = j // (3 * p)
    y = (n // GW) * p + row
    x = (n % GW) * p + col
    px = tl.load(img_ptr + b * s_ib + c * s_ic + y * s_ih + x * s_iw, mask=lanes, other=0.0).to(tl.float32)
    if NORM:
        mean = tl.sum(px, axis=0) / P
        diff = tl.where(lanes, px - mean, 0.0)
        var = tl.sum(diff * diff, axis=0) / (P - 1)
        px = diff / tl.sqrt(var + eps)
    return px, lanes


@triton.jit
def _mae_loss_fwd_kernel(
    img_ptr,  # (B, 3, H, W) images, any strides
    pred_ptr,  # (B, N, P) predictions, unit stride on P
    mask_ptr,  # (B, N) fp32 weights (1: masked patch, loss counted), contiguous
    loss_ptr,  # (B, N) fp32 out: weighted per-patch MSE, contiguous
    N,
    GW,
    P,
    p,
    s_ib,
    s_ic,
    s_ih,
    s_iw,
    s_pb,
    s_pn,
    eps,
    NORM: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // N
    n = pid % N
    w = tl.load(mask_ptr + pid)
    t, lanes = _patch_target(
        img_ptr, b, n, GW, P, p, s_ib, s_ic, s_ih, s_iw, eps, tl.where(w != 0.0, P, 0), NORM, BLOCK_P
    )
    j = tl.arange(0, BLOCK_P).to(tl.int64)
    pr = tl.load(pred_ptr + b * s_pb + n * s_pn + j, mask=lanes, other=0.0).to(tl.float32)
    d = tl.where(lanes, pr - t, 0.0)
    tl.store(loss_ptr + pid, w * tl.sum(d * d, axis=0) / P)


@triton.jit
def _mae_loss_bwd_kernel(
    img_ptr,  # (B, 3, H, W) images, any strides
    pred_ptr,  # (B, N, P) predictions, unit stride on P
    mask_ptr,  # (B, N) fp32 weights, contiguous
    g_ptr,  # (B, N) fp32 upstream gradient of loss_BN, contiguous
    dpred_ptr,  # (B, N, P) out: gradient w.r.t. pred, dtype of pred, contiguous
    N,
    GW,
    P,
    p,
    s_ib,
    s_ic,
    s_ih,
    s_iw,
    s_pb,
    s_pn,
    eps,
    NORM: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // N
    n = pid % N
    w = tl.load(mask_ptr + pid) * tl.load(g_ptr + pid)
    t, lanes = _patch_target(
        img_ptr, b, n, GW, P, p, s_ib, s_ic, s_ih, s_iw, eps, tl.where(w != 0.0, P, 0), NORM, BLOCK_P
    )
    j = tl.arange(0, BLOCK_P).to(tl.int64)
    pr = tl.load(pred_ptr + b * s_pb + n * s_pn + j, mask=lanes, other=0.0).to(tl.float32)
    d = tl.where(lanes, pr - t, 0.0) * (2.0 * w / P)
    tl.store(dpred_ptr + pid * P + j, d.to(dpred_ptr.dtype.element_ty), mask=j < P)


def _check(pred, images, mask, patch_size):
    """Validates shapes / dtypes; returns (pred with unit P stride, mask as contiguous fp32, grid width)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"mae_loss expects images (B, 3, H, W), got {tuple(images.shape)}")
    B, _, H, W = images.shape
    p = patch_size
    if p < 1 or H % p or W % p:
        raise ValueError(f"mae_loss: image size {H}x{W} is not a multiple of patch_size {p}")
    N, P = (H // p) * (W // p), 3 * p * p
    if P > _BLOCKS[-1]:
        raise ValueError(f"mae_loss (triton) supports patch sizes up to 32 (3 * p * p <= {_BLOCKS[-1]}), got {p}")
    if tuple(pred.shape) != (B, N, P):
        raise ValueError(f"mae_loss expects pred (B, N, 3*p*p) = ({B}, {N}, {P}), got {tuple(pred.shape)}")
    if tuple(mask.shape) != (B, N):
        raise ValueError(f"mae_loss expects mask (B, N) = ({B}, {N}), got {tuple(mask.shape)}")
    for name, t in (("pred", pred), ("images", images)):
        if t.dtype not in _DTYPES:
            raise ValueError(f"mae_loss (triton): {name} dtype must be one of {_DTYPES}, got {t.dtype}")
    if pred.stride(-1) != 1:
        pred = pred.contiguous()
    return pred, mask.to(torch.float32).contiguous(), W // p


def _launch(kernel, pred, images, mask, patch_size, norm_pix, eps, *outs):
    pred, mask, GW = _check(pred, images, mask, patch_size)
    B, N, P = pred.shape
    if B * N:
        kernel[(B * N,)](
            images,
            pred,
            mask,
            *outs,
            N,
            GW,
            P,
            patch_size,
            *images.stride(),
            pred.stride(0),
            pred.stride(1),
            float(eps),
            NORM=bool(norm_pix),
            BLOCK_P=triton.next_power_of_2(P),
            num_warps=_warps(triton.next_power_of_2(P)),
        )


def mae_loss_fwd(pred, images, mask, patch_size, norm_pix=True, eps=1e-6):
    """Per-patch weighted MSE loss_BN (B, N) fp32 (see the module docstring)."""
    loss = torch.empty(mask.shape, dtype=torch.float32, device=pred.device)
    _launch(_mae_loss_fwd_kernel, pred, images, mask, patch_size, norm_pix, eps, loss)
    return loss


def mae_loss_bwd(g_BN, pred, images, mask, patch_size, norm_pix=True, eps=1e-6):
    """Gradient w.r.t. pred of sum(g_BN * loss_BN); dtype of pred, contiguous (B, N, P)."""
    if tuple(g_BN.shape) != tuple(mask.shape):
        raise ValueError(f"mae_loss backward: grad shape {tuple(g_BN.shape)} != mask shape {tuple(mask.shape)}")
    dpred = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    _launch(
        _mae_loss_bwd_kernel, pred, images, mask, patch_size, norm_pix, eps, g_BN.to(torch.float32).contiguous(), dpred
    )
    return dpred


_BLOCKS = tuple(2**i for i in range(2, 13))  # BLOCK_P = next_power_of_2(3 * p * p): 4 (p = 1) ... 4096 (p = 32)


def _warps(block_p):
    """4 warps up to 1024 lanes (p <= 16), then one per 256 lanes: at most 16 lanes of a patch per thread."""
    return max(4, block_p // 256)


def launch_variants():
    """Forward and backward for every (pred dtype, images dtype, NORM, BLOCK_P) with its num_warps, for
    fastvit.kernels.aot."""
    from fastvit.kernels.aot import Variant, dtype_name, signature

    out = []
    for pred_dt in map(dtype_name, _DTYPES):
        for img_dt in map(dtype_name, _DTYPES):
            ptrs = dict(img_ptr=img_dt, pred_ptr=pred_dt, mask_ptr="fp32", loss_ptr="fp32", g_ptr="fp32")
            ptrs["dpred_ptr"] = pred_dt
            for kind, fn in (("fwd", _mae_loss_fwd_kernel), ("bwd", _mae_loss_bwd_kernel)):
                for norm in (False, True):
                    for block in _BLOCKS:
                        ce = dict(NORM=norm, BLOCK_P=block)
                        sig = signature(fn, ce, {a: ptrs[a] for a in fn.arg_names if a.endswith("_ptr")}, ("eps",))
                        name = f"mae_loss.{kind}.{pred_dt}.img_{img_dt}.{'norm' if norm else 'raw'}.p{block}"
                        out.append(Variant(name, fn, sig, ce, _warps(block), 3))
    return out


def patchify(images_B3HW, p):
    """(B, 3, H, W) -> (B, N, p*p*3): patches row-major on the grid, pixels in (row, column, channel) order."""
    B, C, H, W = images_B3HW.shape
    x = images_B3HW.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def patch_targets(images_B3HW, p, norm_pix=True, eps=1e-6):
    """MAE targets (B, N, P) in the images' dtype (float64 stays float64)."""
    t = patchify(images_B3HW, p)
    if norm_pix:
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True, unbiased=True) + eps).sqrt()
    return t


def mae_loss_ref(pred, images, mask, patch_size, norm_pix=True, eps=1e-6):
    """Plain-torch reference: mean over masked patches of the per-patch MSE to the (normalised) targets."""
    t = patch_targets(images.to(pred.dtype), patch_size, norm_pix, eps)
    per_patch = ((pred - t) ** 2).mean(-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp(min=1)


# True when this module was imported with TRITON_INTERPRET=1: the kernels then run on CPU tensors.
INTERPRETED = type(_mae_loss_fwd_kernel).__name__ == "InterpretedFunction"
