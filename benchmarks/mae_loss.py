"""`fastvit bench kernels op=mae_loss`: the fused Web-MAE pixel loss against patchify-then-MSE (GB/s)."""

import torch
from fastvit.benchmarks.kernels import bench_backends, bench_dtype, correctness, timed_backends
from fastvit.kernels.mae_loss import mae_loss_ref

from fastvit.ops import mae_loss
from fastvit.ops.mae_loss import REGISTRATION


def bench(ctx):
    """The Web-MAE pixel loss (patchify + per-patch normalisation + masked MSE and its gradient) at ViT-L/14 224 px
    shapes (256 patches of 588 values, 75% masked), against the patchify-then-MSE reference."""
    p = 14
    img64, mask64 = torch.randn(2, 3, 56, 56, dtype=torch.float64), (torch.rand(2, 16) < 0.75).double()
    img32, mask32 = img64.float().to(ctx.device), mask64.float().to(ctx.device)
    rows = correctness(
        ctx,
        "mae_loss",
        "2x3x56x56 p14",
        lambda pred: mae_loss(pred, img32, mask32, p, backend="triton"),
        lambda pred: mae_loss_ref(pred, img64, mask64, p),
        [torch.randn(2, 16, 3 * p * p, dtype=torch.float64)],
        ["loss", "dpred"],
    )
    B, side = (256, 224) if ctx.gpu else (2, 112)  # a CPU times the torch reference only: a small batch
    N, dt = (side // p) ** 2, bench_dtype(ctx)
    images = torch.randn(B, 3, side, side, device=ctx.device, dtype=dt)
    pred = torch.randn(B, N, 3 * p * p, device=ctx.device, dtype=dt, requires_grad=True)
    mask = (torch.rand(B, N, device=ctx.device) < 0.75).to(dt)
    nbytes = images.numel() * images.element_size() + pred.numel() * pred.element_size()
    return rows + bench_backends(
        ctx,
        "mae_loss",
        f"vit_l/14 {B}x{N}x{3 * p * p}",
        dt,
        [pred],
        lambda: mae_loss_ref(pred, images, mask, p),
        lambda be: mae_loss(pred, images, mask, p, backend=be),
        timed_backends(ctx, REGISTRATION),
        {"fwd": nbytes, "bwd": 2 * nbytes, "fwd+bwd": 3 * nbytes},
        "GB/s",
    )
