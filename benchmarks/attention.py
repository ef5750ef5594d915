"""`fastvit bench kernels op=attention`: dense attention in the model's layout and the packed multi-crop batch
against SDPA, torch.compile and every available backend (TFLOP/s), after the Triton kernels' error against float64.
"""

import torch
import torch.nn.functional as F
from fastvit.benchmarks.kernels import (
    VIT_WIDTHS,
    bench_backends,
    bench_dtype,
    correctness,
    shapes,
    timed_backends,
    total_tokens,
)
from fastvit.kernels.attention import attention_ref

from fastvit.ops import attention
from fastvit.ops.attention import REGISTRATION


def bench(ctx):
    cu = torch.tensor([0, 257, 307], dtype=torch.int32, device=ctx.device)
    check_dt = bench_dtype(ctx)  # fp32 on a CPU; bf16 on a GPU, where the Triton kernels take fp16 / bf16 only
    rows = correctness(
        ctx,
        "attention",
        "dense 1x2x197x64",
        lambda q, k, v: attention(q, k, v, backend="triton"),
        attention_ref,
        [torch.randn(1, 2, 197, 64, dtype=torch.float64) for _ in range(3)],
        ["out", "dq", "dk", "dv"],
        check_dt,
    )
    rows += correctness(
        ctx,
        "attention",
        "packed 257+50 x1x80",
        lambda q, k, v: attention(q, k, v, cu_seqlens=cu, max_seqlen=257, backend="triton"),
        lambda q, k, v: attention_ref(q, k, v, None, cu.cpu()),
        [torch.randn(307, 1, 80, dtype=torch.float64) for _ in range(3)],
        ["out", "dq", "dk", "dv"],
        check_dt,
    )
    backends, dt = timed_backends(ctx, REGISTRATION), bench_dtype(ctx)
    for label, width, heads, n in shapes(ctx):
        rows += _attention_case(ctx, label, width, heads, n, backends, dt)
    for name in (["vit_l"] if ctx.quick else list(VIT_WIDTHS)) if ctx.gpu else []:
        rows += _multicrop_case(ctx, name, backends, dt)
    return rows


def _attention_flops(heads, D, lengths_and_counts):
    fwd = sum(4 * count * heads * n * n * D for n, count in lengths_and_counts)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}  # backward: 5 of the 7 matmuls


def _attention_case(ctx, label, width, heads, n, backends, dt):
    """Dense (B, H, n, D) attention in the model's layout (q, k, v views of (B, n, H, D) memory)."""
    B, D = max(total_tokens(ctx) // n, 1), width // heads
    q, k, v = (
        torch.randn(B, n, heads, D, device=ctx.device, dtype=dt).transpose(1, 2).requires_grad_() for _ in range(3)
    )
    return bench_backends(
        ctx,
        "attention",
        f"{label} {B}x{heads}x{n}x{D}",
        dt,
        [q, k, v],
        lambda: F.scaled_dot_product_attention(q, k, v),
        lambda b: attention(q, k, v, backend=b),
        backends,
        _attention_flops(heads, D, [(n, B)]),
        "TFLOP/s",
    )


def _multicrop_case(ctx, name, backends, dt):
    """The packed multi-crop student batch (2 x 257 + 8 x 50 tokens per image) in one launch, against
    one SDPA call per resolution (the reference) and two dense fastvit triton calls."""
    width, heads = VIT_WIDTHS[name]
    D, imgs = width // heads, max(total_tokens(ctx) // (2 * 257 + 8 * 50), 1)
    G, L = 2 * imgs, 8 * imgs  # global and local crops
    seqlens = [257] * G + [50] * L  # host lengths beside cu_seqlens, as the model's Packing passes them
    cu = torch.tensor(
        [0, *range(257, G * 257 + 1, 257), *range(G * 257 + 50, G * 257 + L * 50 + 1, 50)],
        dtype=torch.int32,
        device=ctx.device,
    )
    q, k, v = (
        torch.randn(G * 257 + L * 50, heads, D, device=ctx.device, dtype=dt, requires_grad=True) for _ in range(3)
    )

    def per_resolution(fn):
        split = lambda t: (
            t[: G * 257].view(G, 257, heads, D).transpose(1, 2),
            t[G * 257 :].view(L, 50, heads, D).transpose(1, 2),
        )
        return [fn(*parts) for parts in zip(split(q), split(k), split(v))]

    def fastvit_fn(b):
        if b == "triton per-resolution":
            return per_resolution(lambda *t: attention(*t, backend="triton"))
        return attention(q, k, v, cu_seqlens=cu, seqlens=seqlens, max_seqlen=257, backend=b)

    variants = backends + ["triton per-resolution"] * ("triton" in backends)
    return bench_backends(
        ctx,
        "attention",
        f"{name} multicrop {imgs}img x{heads}x{D}",
        dt,
        [q, k, v],
        lambda: per_resolution(F.scaled_dot_product_attention),
        fastvit_fn,
        variants,
        _attention_flops(heads, D, [(257, G), (50, L)]),
        "TFLOP/s",
    )
