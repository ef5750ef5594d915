"""`fastvit bench kernels op=layer_norm`: LayerNorm and the fused residual add + LayerNorm at ViT widths against
torch, torch.compile and every available backend (GB/s), after the Triton kernels' error against float64.
"""

import torch
import torch.nn.functional as F
from fastvit.benchmarks.kernels import bench_backends, bench_dtype, correctness, shapes, timed_backends, total_tokens
from fastvit.kernels.layer_norm import add_layer_norm_ref, layer_norm_ref

from fastvit.ops import add_layer_norm, layer_norm
from fastvit.ops.layer_norm import REGISTRATION


def bench(ctx):
    x64, r64, w64, b64 = (torch.randn(s, dtype=torch.float64) for s in ((8, 1023), (8, 1023), (1023,), (1023,)))
    rows = correctness(
        ctx,
        "layer_norm",
        "8x1023",
        lambda x, w, b: layer_norm(x, w, b, backend="triton"),
        lambda x, w, b: layer_norm_ref(x, w, b, 1e-6),
        [x64, w64, b64],
        ["y", "dx", "dw", "db"],
    )
    rows += correctness(
        ctx,
        "add_layer_norm",
        "8x1023",
        lambda x, r, w, b: add_layer_norm(x, r, w, b, backend="triton"),
        lambda x, r, w, b: add_layer_norm_ref(x, r, w, b, 1e-6),
        [x64, r64, w64, b64],
        ["y", "s", "dx", "dr", "dw", "db"],
    )
    backends, dt = timed_backends(ctx, REGISTRATION), bench_dtype(ctx)
    for label, width, _, _ in {shape[1]: shape for shape in shapes(ctx)}.values():
        rows += _layer_norm_case(ctx, label, width, backends, dt)
    return rows


def _layer_norm_case(ctx, label, width, backends, dt):
    M = total_tokens(ctx)
    x, r = (torch.randn(M, width, device=ctx.device, dtype=dt, requires_grad=True) for _ in range(2))
    w, b = (torch.randn(width, device=ctx.device, dtype=dt, requires_grad=True) for _ in range(2))
    nbytes = M * width * x.element_size()  # one (M, width) tensor; the ideal traffic counts whole tensors
    rows = bench_backends(
        ctx,
        "layer_norm",
        f"{label} {M}x{width}",
        dt,
        [x, w, b],
        lambda: F.layer_norm(x, (width,), w, b, 1e-6),
        lambda be: layer_norm(x, w, b, backend=be),
        backends,
        {"fwd": 2 * nbytes, "bwd": 3 * nbytes, "fwd+bwd": 5 * nbytes},
        "GB/s",
    )
    return rows + bench_backends(
        ctx,
        "add_layer_norm",
        f"{label} {M}x{width}",
        dt,
        [x, r, w, b],
        lambda: add_layer_norm_ref(x, r, w, b, 1e-6),
        lambda be: add_layer_norm(x, r, w, b, backend=be),
        backends,
        {"fwd": 4 * nbytes, "bwd": 4 * nbytes, "fwd+bwd": 8 * nbytes},
        "GB/s",
    )
