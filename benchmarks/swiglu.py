"""`fastvit bench kernels op=swiglu`: the SwiGLU gate at the hidden widths of ViT-L / g / 7B against torch,
torch.compile and every available backend (GB/s), after the Triton kernel's error against float64.
"""

import torch
from fastvit.benchmarks.kernels import bench_backends, bench_dtype, correctness, shapes, timed_backends, total_tokens
from fastvit.kernels.swiglu import swiglu_ref

from fastvit.ops import swiglu
from fastvit.ops.swiglu import REGISTRATION


def bench(ctx):
    rows = correctness(
        ctx,
        "swiglu",
        "8x2x341",
        lambda x: swiglu(x, backend="triton"),
        swiglu_ref,
        [torch.randn(8, 2 * 341, dtype=torch.float64)],
        ["y", "dx"],
    )
    backends, dt = timed_backends(ctx, REGISTRATION), bench_dtype(ctx)
    for label, width, _, _ in {shape[1]: shape for shape in shapes(ctx)}.values():
        rows += _swiglu_case(ctx, label, width, backends, dt)
    return rows


def _swiglu_case(ctx, label, width, backends, dt):
    M, h = total_tokens(ctx), round(width * 8 / 3 / 64) * 64  # h: the SwiGLU hidden width of a ViT this wide
    x = torch.randn(M, 2 * h, device=ctx.device, dtype=dt, requires_grad=True)
    nbytes = M * h * x.element_size()
    return bench_backends(
        ctx,
        "swiglu",
        f"{label} {M}x2x{h}",
        dt,
        [x],
        lambda: swiglu_ref(x),
        lambda be: swiglu(x, backend=be),
        backends,
        {"fwd": 3 * nbytes, "bwd": 5 * nbytes, "fwd+bwd": 8 * nbytes},
        "GB/s",
    )
