"""The Triton kernels compiled for a real GPU: ViT-sized shapes, bf16 and fp32, against float64 references."""

import pytest
import torch
from fastvit.kernels.attention import attention_ref
from fastvit.kernels.clip_loss import clip_loss_ref
from fastvit.kernels.layer_norm import add_layer_norm_ref
from fastvit.kernels.mae_loss import mae_loss_ref
from fastvit.kernels.swiglu import swiglu_ref
from kernel_tolerance import kernel_tol

from fastvit.ops import add_layer_norm, attention, clip_loss, mae_loss, swiglu
from fastvit.testing import assert_close

pytestmark = pytest.mark.gpu


def _outputs_and_grads(fn, inputs, grads):
    leaves = [t.detach().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    return outs + list(torch.autograd.grad(outs, leaves, grads[: len(outs)]))


def _check(fn, ref, inputs64, grads64, dtype, name):
    expected = _outputs_and_grads(ref, inputs64, grads64)
    actual = _outputs_and_grads(fn, [t.to(dtype) for t in inputs64], [g.to(dtype) for g in grads64])
    for i, (a, e) in enumerate(zip(actual, expected)):
        tol = kernel_tol(
            lambda *t, i=i: _outputs_and_grads(ref, t[: len(inputs64)], t[len(inputs64) :])[i],
            [*inputs64, *grads64],
            dtype,
        )
        assert_close(a, e, atol=tol, name=f"{name} output/grad {i} {dtype}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [32, 64, 80, 128])
def test_attention_dense_and_packed_gpu(dtype, D):
    H = 4
    qkv = [torch.randn(4, H, 257, D, device="cuda", dtype=torch.float64) for _ in range(4)]
    _check(lambda q, k, v: attention(q, k, v, backend="triton"), attention_ref, qkv[:3], qkv[3:], dtype, "dense")
    lengths = [257, 257, 50, 50, 50, 37, 1]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    packed = [torch.randn(sum(lengths), H, D, device="cuda", dtype=torch.float64) for _ in range(4)]
    _check(
        lambda q, k, v: attention(q, k, v, cu_seqlens=cu, max_seqlen=257, backend="triton"),
        lambda q, k, v: attention_ref(q, k, v, None, cu.cpu()),
        packed[:3],
        packed[3:],
        dtype,
        "packed",
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("width", [1023, 1536, 4096])
def test_add_layer_norm_and_swiglu_gpu(dtype, width):
    x, r, dy, ds = (torch.randn(4 * 257, width, device="cuda", dtype=torch.float64) for _ in range(4))
    w, b = 1 + 0.1 * torch.randn(width, device="cuda", dtype=torch.float64), torch.randn(width, device="cuda").double()
    _check(
        lambda *t: add_layer_norm(*t, backend="triton"),
        lambda *t: add_layer_norm_ref(*t, 1e-6),
        [x, r, w, b],
        [dy, ds],
        dtype,
        "add_layer_norm",
    )
    xs = torch.randn(4 * 257, 2 * width, device="cuda", dtype=torch.float64)
    _check(lambda t: swiglu(t, backend="triton"), swiglu_ref, [xs], [dy], dtype, "swiglu")


def test_fp32_attention_runs_sdpa_on_gpu():
    """fp32 Triton attention would spill in every tile (tests/kernels/test_compile.py): auto sends it to SDPA and
    the Triton backend refuses it with the reason."""
    q = torch.randn(2, 4, 257, 64, device="cuda", dtype=torch.float32)
    expected = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert_close(attention(q, q, q), expected, atol=1e-5, name="auto fp32 vs SDPA")
    with pytest.raises(ValueError, match="fp32 through SDPA"):
        attention(q, q, q, backend="triton")


def test_packed_autotune_key_follows_max_seqlen():
    """Packed launches tune per power-of-two max_seqlen bucket, not once for whatever batch came first."""
    from fastvit.kernels import attention as kernels

    H, D = 4, 64
    for n in (50, 257):
        cu = torch.tensor([0, n, 2 * n], dtype=torch.int32, device="cuda")
        q = torch.randn(2 * n, H, D, device="cuda", dtype=torch.bfloat16)
        attention(q, q, q, cu_seqlens=cu, max_seqlen=n, backend="triton")
    keys = list(kernels._tuned("fwd", 64).cache)
    assert {k[1] for k in keys if k[2]} >= {64, 512}, keys


def test_auto_picks_triton_on_gpu_and_compiles():
    q = torch.randn(2, 4, 257, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    f = torch.compile(lambda t: attention(t, t, t).float().square().sum(), fullgraph=True)
    f(q).backward()
    expected = attention(q, q, q, backend="torch")
    assert_close(attention(q, q, q), expected, atol=2e-2, name="auto vs torch")
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_gpu(dtype, norm_pix):
    """The fused MAE pixel loss compiled for the GPU at a Web-MAE shape (patch 14, 16 x 16 grid, 75% masked) against
    float64, loss and d pred."""
    B, p, side = 4, 14, 224
    N = (side // p) ** 2
    images = torch.randn(B, 3, side, side, device="cuda", dtype=torch.float64) * 2 + 0.5
    pred = torch.randn(B, N, 3 * p * p, device="cuda", dtype=torch.float64)
    mask = torch.rand(B, N, device="cuda") < 0.75
    _check(  # fp32 images beside the predictions, as autocast hands them over; no gradient to the images
        lambda pr: mae_loss(pr, images.float(), mask, p, norm_pix=norm_pix, backend="triton"),
        lambda pr: mae_loss_ref(pr, images, mask, p, norm_pix),
        [pred],
        [torch.tensor(1.0, device="cuda", dtype=torch.float64)],
        dtype,
        "mae_loss",
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_clip_loss_gpu(dtype, kind):
    """The chunked contrastive kernels compiled for the GPU: a rank's 96 rows against 1536 global columns (more than
    one 1024-column block), offset into the batch, chunked, against float64; the loss and its gradients."""
    b, B, D, offset = 96, 1536, 64, 512
    q = torch.nn.functional.normalize(torch.randn(b, D, device="cuda", dtype=torch.float64), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, D, device="cuda", dtype=torch.float64), dim=-1)
    scale = torch.tensor([12.0], device="cuda", dtype=torch.float64)
    bias = torch.tensor([-4.0], device="cuda", dtype=torch.float64)
    siglip = kind == "siglip"
    bias = [bias] if siglip else []  # InfoNCE has no bias

    def fn(q_, k_, s_, *b_):
        b_ = b_[0].float() if siglip else None
        return clip_loss(q_, k_, s_.float(), offset=offset, kind=kind, logit_bias=b_, chunk_rows=32, backend="triton")

    _check(
        fn,
        lambda q_, k_, s_, *b_: clip_loss_ref(q_, k_, s_, offset, b_[0] if siglip else None, siglip),
        [q, k, scale, *bias],
        [torch.tensor(1.0, device="cuda", dtype=torch.float64)],
        dtype,
        f"clip_loss {kind}",
    )
