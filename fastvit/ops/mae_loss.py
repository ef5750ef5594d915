"""fastvit.ops.mae_loss: the Web-MAE pixel loss (patchify + per-patch norm + masked MSE), fused.

Registered as the custom ops fastvit::mae_patch_loss (+ fastvit::mae_patch_loss_backward) with
register_fake and register_autograd; backends "triton" (fastvit.kernels.mae_loss) and "torch".
Gradients flow to the predictions only (the images are data). pred (bf16 / fp16 under autocast) and
the images (fp32 or bf16) may differ in dtype: targets, differences and the loss are fp32 (fp64 for fp64
predictions), whatever the caller's autocast, and the gradient has the dtype of pred.
"""

import torch

from fastvit.ops import backend as backend_lib

REGISTRATION = backend_lib.Registration(
    ops=("mae_loss",), kernels=("mae_loss",), backends=("auto", "triton", "torch"), bench="mae_loss"
)


def _diff_torch(pred, images, p, norm_pix, eps):
    from fastvit.kernels.mae_loss import patch_targets

    dt = torch.float64 if pred.dtype == torch.float64 else torch.float32
    return pred.to(dt) - patch_targets(images.to(dt), p, norm_pix, eps)


@torch.library.custom_op("fastvit::mae_patch_loss", mutates_args=())
@backend_lib.no_autocast
def _mae_patch_loss(
    pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, p: int, norm_pix: bool, eps: float, backend: str
) -> torch.Tensor:
    if backend == "triton":
        from fastvit.kernels.mae_loss import mae_loss_fwd

        return mae_loss_fwd(pred, images, mask, p, norm_pix, eps)
    d = _diff_torch(pred, images, p, norm_pix, eps)
    loss = (d * d).mean(-1) * mask.to(d.dtype)
    return loss if pred.dtype == torch.float64 else loss.float()


@_mae_patch_loss.register_fake
def _(pred, images, mask, p, norm_pix, eps, backend):
    return pred.new_empty(pred.shape[:2], dtype=torch.float64 if pred.dtype == torch.float64 else torch.float32)


@torch.library.custom_op("fastvit::mae_patch_loss_backward", mutates_args=())
@backend_lib.no_autocast
def _mae_patch_loss_backward(
    g: torch.Tensor,
    pred: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    p: int,
    norm_pix: bool,
    eps: float,
    backend: str,
) -> torch.Tensor:
    if backend == "triton":
        from fastvit.kernels.mae_loss import mae_loss_bwd

        return mae_loss_bwd(g, pred, images, mask, p, norm_pix, eps)
    d = _diff_torch(pred, images, p, norm_pix, eps)
    w = (g.to(d.dtype) * mask.to(d.dtype))[..., None] * (2.0 / d.shape[-1])
    return (d * w).to(pred.dtype)


@_mae_patch_loss_backward.register_fake
def _(g, pred, images, mask, p, norm_pix, eps, backend):
    return torch.empty_like(pred)


def _setup_context(ctx, inputs, output):
    pred, images, mask, p, norm_pix, eps, backend = inputs
    ctx.save_for_backward(pred, images, mask)
    ctx.args = (p, norm_pix, eps, backend)


def _backward(ctx, g_BN):
    pred, images, mask = ctx.saved_tensors
    dpred = torch.ops.fastvit.mae_patch_loss_backward(g_BN.contiguous(), pred, images, mask, *ctx.args)
    return dpred, None, None, None, None, None, None


_mae_patch_loss.register_autograd(_backward, setup_context=_setup_context)


def mae_loss(pred_BNP, images_B3HW, mask_BN, patch_size, *, norm_pix=True, eps=1e-6, backend="auto"):
    """Mean over masked patches (mask_BN True / 1) of the per-patch MSE between pred (B, N, 3*p*p) and the
    images' patches (MAE (row, column, channel) order), normalised per patch when norm_pix. Scalar fp32."""
    if images_B3HW.dim() != 4 or pred_BNP.dim() != 3 or mask_BN.shape != pred_BNP.shape[:2]:
        raise ValueError(
            f"mae_loss expects pred (B, N, P), images (B, 3, H, W), mask (B, N); got {tuple(pred_BNP.shape)}, "
            f"{tuple(images_B3HW.shape)}, {tuple(mask_BN.shape)}"
        )
    mask_f = mask_BN.to(torch.float64 if pred_BNP.dtype == torch.float64 else torch.float32)
    be = REGISTRATION.resolve("mae_loss", backend, pred_BNP)
    per_patch = _mae_patch_loss(pred_BNP, images_B3HW, mask_f, int(patch_size), bool(norm_pix), float(eps), be)
    return per_patch.sum() / mask_f.sum().clamp(min=1)
