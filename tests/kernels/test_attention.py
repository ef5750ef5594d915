"""fastvit.ops.attention (Triton through the interpreter on a CPU; torch backend) against float64:
dense and packed, awkward lengths, head dims 64/80/128, the output and all three input gradients."""

import pytest
import torch
from fastvit.kernels.attention import attention_ref
from kernel_tolerance import kernel_tol

from fastvit.ops import attention
from fastvit.testing import assert_close


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _ref_outputs(q, k, v, do, cu_seqlens):
    """[out, dq, dk, dv] of the straightforward reference."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = attention_ref(q, k, v, None, cu_seqlens)
    return [out, *torch.autograd.grad(out, (q, k, v), do)]


def _check(shape, cu_seqlens, dtype, backend):
    q, k, v, do = (torch.randn(shape, dtype=torch.float64) for _ in range(4))
    expected = _ref_outputs(q, k, v, do, cu_seqlens)
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, cu_seqlens=cu_seqlens, backend=backend)
    actual = [out, *torch.autograd.grad(out, leaves, do.to(dtype))]
    for i, (name, a, e) in enumerate(zip(["out", "dq", "dk", "dv"], actual, expected)):
        assert a.dtype == dtype
        tol = kernel_tol(lambda *t, i=i: _ref_outputs(*t, cu_seqlens)[i], [q, k, v, do], dtype)
        assert_close(a, e, atol=tol, name=f"{backend} {name} {dtype} {tuple(shape)}")


@pytest.mark.parametrize(
    "B, H, N, D", [(1, 2, 197, 64), (1, 1, 257, 80), (2, 1, 37, 128), (1, 2, 50, 64), (1, 1, 13, 80)]
)
def test_dense_fp32(B, H, N, D):
    _check((B, H, N, D), None, torch.float32, "triton")


@pytest.mark.parametrize(
    "lengths, H, D", [([257, 50, 50], 2, 64), ([197, 37, 13, 1], 1, 80), ([50, 257], 1, 128), ([5, 0, 3], 2, 64)]
)
def test_packed_fp32(lengths, H, D):
    _check((sum(lengths), H, D), _cu(lengths), torch.float32, "triton")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    _check((1, 1, 197, 64), None, dtype, "triton")
    _check((257 + 50, 1, 80), _cu([257, 50]), dtype, "triton")


@pytest.mark.parametrize("lengths", [[257, 50, 50, 37], [50, 257, 50]])
def test_torch_backend_packed_groups(lengths):
    """The torch backend batches equal lengths (back to back or not) into one SDPA call per length."""
    _check((sum(lengths), 2, 64), _cu(lengths), torch.float32, "torch")


@pytest.mark.parametrize("lengths", [[257, 50, 50, 37], [50, 257, 0, 50], [13]])
def test_torch_backend_packed_reads_only_host_lengths(lengths):
    """Given the host seqlens, the torch backend never reads cu_seqlens' values (a device read on a GPU): with
    garbage in cu_seqlens the result is still the float64 reference's, forward and backward. (cu_seqlens stays
    the layout the kernel backends read; only the torch fallback groups by seqlens.)"""
    cu = _cu(lengths)
    q, k, v, do = (torch.randn(sum(lengths), 2, 64, dtype=torch.float64) for _ in range(4))
    expected = _ref_outputs(q, k, v, do, cu)
    unread = torch.full_like(cu, -7)  # read, it would fail the "rise from 0" check
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, cu_seqlens=unread, seqlens=lengths, backend="torch")
    actual = [out, *torch.autograd.grad(out, leaves, do.float())]
    for i, (name, a, e) in enumerate(zip(["out", "dq", "dk", "dv"], actual, expected)):
        tol = kernel_tol(lambda *t, i=i: _ref_outputs(*t, cu)[i], [q, k, v, do], torch.float32)
        assert_close(a, e, atol=tol, name=f"torch {name} {lengths} from host seqlens")


def test_model_layouts_match_between_backends():
    """The layouts the model passes (q, k, v as views of one qkv projection) give the same result
    on every backend, and dense outputs are (B, N, H, D) in memory."""
    B, N, H, D = 2, 50, 2, 64
    qkv = torch.randn(B, N, 3, H, D).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D) views
    outs = [attention(*qkv, backend=b) for b in ("torch", "triton")]
    assert_close(outs[1], outs[0], atol=1e-5, name="dense triton vs torch")
    assert all(o.transpose(1, 2).is_contiguous() for o in outs)
    lengths = [50, 37, 50]
    q, k, v = torch.randn(sum(lengths), 3, H, D).unbind(1)  # (T, H, D) views
    packed = [attention(q, k, v, cu_seqlens=_cu(lengths), max_seqlen=50, backend=b) for b in ("torch", "triton")]
    assert_close(packed[1], packed[0], atol=1e-5, name="packed triton vs torch")


def test_packed_equals_separate_calls():
    """One packed launch over a 257- and a 50-token sequence equals two dense calls."""
    H, D = 1, 64
    a, b = torch.randn(257, H, D), torch.randn(50, H, D)
    packed = attention(*(torch.cat([a, b]),) * 3, cu_seqlens=_cu([257, 50]), backend="triton")
    dense = [attention(*(t.transpose(0, 1)[None],) * 3, backend="triton")[0].transpose(0, 1) for t in (a, b)]
    assert_close(packed, torch.cat(dense), atol=1e-6, name="packed vs dense")


def test_errors():
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="backend"):
        attention(q, q, q, backend="xformers")
    with pytest.raises(ValueError, match="int32"):
        attention(q[0].transpose(0, 1), q[0].transpose(0, 1), q[0].transpose(0, 1), cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="shapes must match"):
        attention(q, q, q[..., :4])
    with pytest.raises(ValueError, match="rise from 0"):
        t = torch.randn(5, 2, 8)
        attention(t, t, t, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32), backend="torch")
    with pytest.raises(ValueError, match="summing to the token count 5"):
        attention(t, t, t, cu_seqlens=torch.tensor([0, 4], dtype=torch.int32), seqlens=[4], backend="torch")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape, lengths", [((2, 2, 50, 64), None), ((37 + 13, 2, 80), [37, 13])])
def test_autocast_mix(dtype, backend, shape, lengths):
    """Inside an autocast region (forward and backward), q, k, v as the qkv Linear hands them (low precision):
    out and gradients keep that dtype and stay within 2x (4x: interpreter bf16) torch's own error, dense and
    packed; the region does not reach inside the op."""
    cu = None if lengths is None else _cu(lengths)
    q, k, v, do = (torch.randn(shape, dtype=torch.float64) for _ in range(4))
    expected = _ref_outputs(q, k, v, do, cu)
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=dtype):
        out = attention(*leaves, cu_seqlens=cu, backend=backend)
        actual = [out, *torch.autograd.grad(out, leaves, do.to(dtype))]
    for i, (name, a, e) in enumerate(zip(["out", "dq", "dk", "dv"], actual, expected)):
        assert a.dtype == dtype, (name, a.dtype)
        tol = kernel_tol(lambda *t, i=i: _ref_outputs(*t, cu)[i], [q, k, v, do], dtype)
        assert_close(a, e, atol=tol, name=f"{backend} {name} {dtype} {tuple(shape)} under autocast")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mixed_input_dtypes_are_promoted(backend):
    """bf16 q and k beside an fp32 v compute in the promoted dtype (fp32), as one fp32 call would."""
    q, k, v = (torch.randn(1, 2, 37, 64) for _ in range(3))
    q16, k16 = q.bfloat16().requires_grad_(), k.bfloat16().requires_grad_()
    v32 = v.clone().requires_grad_()
    out = attention(q16, k16, v32, backend=backend)
    dq, dk, dv = torch.autograd.grad(out.sum(), (q16, k16, v32))
    ref = attention_ref(q16.double(), k16.double(), v.double())
    assert out.dtype == torch.float32 and (dq.dtype, dk.dtype, dv.dtype) == (
        torch.bfloat16,
        torch.bfloat16,
        torch.float32,
    )
    assert_close(out, ref, atol=1e-5, name=f"{backend} out")
