"""fastvit.ops.soft_cross_entropy (Triton under the interpreter and torch) against the float64 definition."""

import pytest
import torch
from fastvit.kernels.soft_cross_entropy import soft_cross_entropy_fwd_triton

from fastvit.ops.soft_cross_entropy import soft_cross_entropy
from fastvit.testing import assert_close, low_precision_tol


def definition64(s, p, temp):
    return -(p.double() * torch.log_softmax(s.double() / temp, dim=-1)).sum(-1)


def run(s64, p64, temp, dtype, backend, g):
    s = s64.to(dtype).requires_grad_()
    p = p64.to(dtype).requires_grad_()
    loss = soft_cross_entropy(s, p, temp, backend=backend)
    (loss * g).sum().backward()
    return loss, s.grad, p.grad


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("R,K", [(1, 17), (7, 301), (5, 1000), (2, 4099)])
def test_matches_float64_definition(backend, R, K):
    s64 = torch.randn(R, K, dtype=torch.float64) * 2
    p64 = torch.softmax(torch.randn(R, K, dtype=torch.float64) * 3, dim=-1)
    g = torch.randn(R, dtype=torch.float64)
    loss, gs, gp = run(s64, p64, 0.1, torch.float32, backend, g.float())
    s_ref, p_ref = s64.clone().requires_grad_(), p64.clone().requires_grad_()
    (definition64(s_ref, p_ref, 0.1) * g).sum().backward()
    assert loss.dtype == torch.float32
    assert_close(loss, definition64(s64, p64, 0.1), atol=1e-4, rtol=1e-5, name="loss")
    assert_close(gs, s_ref.grad, atol=1e-4, rtol=1e-4, name="grad_s")
    assert_close(gp, p_ref.grad, atol=1e-4, rtol=1e-4, name="grad_p")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    R, K = 3, 300
    s64, p64 = torch.randn(R, K, dtype=torch.float64), torch.softmax(torch.randn(R, K, dtype=torch.float64), -1)
    tol = low_precision_tol(
        lambda s, p: (
            definition64(s, p, 0.1) if s.dtype == torch.float64 else -(p * torch.log_softmax(s / 0.1, -1)).sum(-1)
        ),
        [s64, p64],
        dtype,
    )
    loss, gs, _ = run(s64, p64, 0.1, dtype, "triton", torch.ones(R))
    assert gs.dtype == dtype
    assert_close(loss, definition64(s64.to(dtype), p64.to(dtype), 0.1), atol=tol, name="loss lowp")


def test_non_contiguous_and_leading_dims():
    s = torch.randn(2, 3, 40)[..., ::2]
    p = torch.softmax(torch.randn(2, 3, 20), -1)
    out = soft_cross_entropy(s, p, 0.2, backend="triton")
    assert out.shape == (2, 3)
    assert_close(out, definition64(s, p, 0.2), atol=1e-5, name="strided")


def test_teacher_without_grad_and_opcheck():
    s = torch.randn(4, 33, requires_grad=True)
    p = torch.softmax(torch.randn(4, 33), -1)
    soft_cross_entropy(s, p, 0.1).sum().backward()
    assert s.grad is not None and p.grad is None
    from fastvit.ops.soft_cross_entropy import _fwd_op

    torch.library.opcheck(_fwd_op, (s.detach().requires_grad_(), p, 0.1, "torch"))


def test_errors_name_values():
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        soft_cross_entropy(torch.randn(3, 5), torch.randn(3, 6), 0.1)
    with pytest.raises(ValueError, match="-0.1"):
        soft_cross_entropy(torch.randn(3, 5), torch.randn(3, 5), -0.1)
    with pytest.raises(ValueError, match="cuda"):
        soft_cross_entropy(torch.randn(3, 5), torch.randn(3, 5), 0.1, backend="cuda")
    with pytest.raises(ValueError, match="int64"):
        soft_cross_entropy_fwd_triton(torch.ones(3, 5, dtype=torch.int64), torch.ones(3, 5), 0.1)
