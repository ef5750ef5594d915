"""The fused MAE pixel loss (patchify + per-patch norm + masked MSE) and its gradient against float64."""

import pytest
import torch
from fastvit.kernels.mae_loss import mae_loss_ref, patchify

from fastvit.ops import mae_loss
from fastvit.testing import assert_close, low_precision_tol

# (batch, patch, H, W): ViT-real p=14 / p=16 grids, a non-square grid, a prime patch count, a single patch
SHAPES = [(2, 14, 28, 42), (2, 16, 32, 16), (3, 4, 20, 28), (1, 5, 5, 5)]


def _inputs(B, p, H, W, dtype=torch.float64, ratio=0.75):
    N = (H // p) * (W // p)
    images = torch.randn(B, 3, H, W, dtype=dtype) * 2 + 0.5
    pred = torch.randn(B, N, 3 * p * p, dtype=dtype)
    mask = torch.rand(B, N) < ratio
    mask.view(-1)[0] = True
    return pred, images, mask


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_mae_loss_matches_float64(shape, norm_pix, backend):
    B, p, H, W = shape
    pred64, images64, mask = _inputs(B, p, H, W)
    pred64.requires_grad_()
    ref = mae_loss_ref(pred64, images64, mask, p, norm_pix)
    (g_ref,) = torch.autograd.grad(ref, pred64)
    pred = pred64.detach().float().requires_grad_()
    out = mae_loss(
        pred, images64.float().transpose(2, 3).contiguous().transpose(2, 3), mask, p, norm_pix=norm_pix, backend=backend
    )  # non-contiguous images
    out.backward()
    assert out.dtype == torch.float32 and out.dim() == 0
    assert_close(out, ref, atol=1e-5, rtol=1e-5, name="loss")
    assert_close(pred.grad, g_ref, atol=1e-7, rtol=1e-4, name="d pred")
    unmasked = ~mask
    assert bool((pred.grad[unmasked] == 0).all()), "unmasked patches must get no gradient"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mae_loss_low_precision(dtype):
    pred64, images64, mask = _inputs(2, 14, 28, 28)
    ref = mae_loss_ref(pred64, images64, mask, 14)
    tol = low_precision_tol(lambda pr, im: mae_loss_ref(pr, im, mask, 14), [pred64, images64], dtype)
    out = mae_loss(pred64.to(dtype), images64.to(dtype), mask, 14, backend="triton")
    assert_close(out, ref, atol=tol, name=f"loss {dtype}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_mae_loss_autocast_mix(dtype, backend):
    """What autocast hands the loss: low-precision decoder predictions beside fp32 images, forward and backward
    inside the region. The loss is fp32, d pred has pred's dtype, both within 2x (4x: interpreter bf16 stores)
    torch's own error against float64."""
    pred64, images64, mask = _inputs(2, 8, 24, 16)
    pred64.requires_grad_()
    ref = mae_loss_ref(pred64, images64, mask, 8)
    (g_ref,) = torch.autograd.grad(ref, pred64)

    def grad_of(pr, im):
        pr = pr.detach().requires_grad_()
        return torch.autograd.grad(mae_loss_ref(pr, im.to(pr.dtype), mask, 8), pr)[0]

    pred = pred64.detach().to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        out = mae_loss(pred, images64.float(), mask, 8, backend=backend)
        out.backward()
    assert out.dtype == torch.float32 and pred.grad.dtype == dtype
    inputs = [pred64.detach(), images64]
    tol = low_precision_tol(lambda pr, im: mae_loss_ref(pr, im, mask, 8), inputs, dtype)
    assert_close(out, ref, atol=tol, name=f"{backend} loss")
    factor = 4.0 if dtype == torch.bfloat16 and backend == "triton" else 2.0  # the interpreter truncates bf16
    assert_close(pred.grad, g_ref, atol=low_precision_tol(grad_of, inputs, dtype, factor=factor), name="d pred")


def test_patchify_order_and_upstream_gradient():
    """Patch n holds the pixels of grid cell n in (row, column, channel) order; a non-unit upstream gradient scales."""
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).view(2, 3, 4, 6)
    patches = patchify(x, 2)
    assert patches.shape == (2, 6, 12)
    assert patches[1, 5, 3 * 1 + 2].item() == x[1, 2, 2, 5].item()  # patch (1, 2), pixel row 0, col 1, channel 2
    pred, images, mask = _inputs(2, 4, 8, 8)
    p1 = pred.float().requires_grad_()
    (3.0 * mae_loss(p1, images.float(), mask, 4, backend="triton")).backward()
    p2 = pred.clone().requires_grad_()
    (3.0 * mae_loss_ref(p2, images, mask, 4)).backward()
    assert_close(p1.grad, p2.grad, atol=1e-7, rtol=1e-4, name="3x d pred")


def test_mae_loss_rejects_bad_shapes():
    pred, images, mask = _inputs(2, 4, 8, 8)
    with pytest.raises(ValueError, match="pred"):
        mae_loss(pred[:, :, :-1].float(), images.float(), mask, 4, backend="triton")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        mae_loss(pred.float(), images.float(), mask, 3, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        mae_loss(pred.float(), images.float(), mask, 4, backend="cuda")
