"""The one Sinkhorn-Knopp (log domain, factored logits) and softmax-centred targets vs float64 definitions."""

import math

import pytest
import torch
import torch.nn.functional as F
from fastvit.kernels.sinkhorn import sinkhorn_knopp_ref

from fastvit.ops.prototype_targets import TeacherTargets, softmax_center_targets
from fastvit.ops.sinkhorn import sinkhorn_knopp
from fastvit.testing import assert_close

BACKENDS = ["torch", "triton"]


def unit(*shape, scale=1.0):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1) * scale


def definition64(t, temp, n_iters=3, n_rows=None):
    """DINOv2's SinkhornKnopp as written (dinov2/loss/dino_clstoken_loss.py), one process, float64, no shift."""
    Q = torch.exp(t.double() / temp).t()  # [K, B]
    K, B = Q.shape
    B = B if n_rows is None else n_rows
    Q = Q / Q.sum()
    for _ in range(n_iters):
        Q = Q / Q.sum(dim=1, keepdim=True) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / B
    return (Q * B).t()


def single_shift_fp32(t, temp, n_iters=3):
    """The scheme this replaces: one global shift exp(t / temp - max), then DINOv2's iteration, in fp32."""
    Q = torch.exp(t.float() / temp - (t.float() / temp).max()).t()
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(n_iters):
        Q = Q / Q.sum(dim=1, keepdim=True) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / B
    return (Q * B).t()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T,B,K,D,chunk", [(1, 1, 17, 8, 8), (2, 7, 301, 16, 64), (1, 33, 1000, 24, 1000)])
def test_matches_definition(backend, T, B, K, D, chunk):
    x, w = unit(T, B, D), unit(K, D)
    p = sinkhorn_knopp(x.float(), w.float(), 0.05, 3, chunk=chunk, backend=backend)
    assert isinstance(p, TeacherTargets) and p.a.shape == (K,) and p.b.shape == (T, B)
    expected = definition64((x.float().double() @ w.float().double().t()).reshape(T * B, K), 0.05)
    got = p.materialize().reshape(T * B, K)
    assert_close(got, expected, atol=1e-6, rtol=1e-4, name=f"sinkhorn {backend}")
    assert_close(got.sum(-1), torch.ones(T * B, dtype=got.dtype), atol=1e-5, name="rows sum to 1")


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_of_magnitude_12_at_temperature_004(backend):
    """t / temp reaches 300: a single global shift underflows whole rows (NaN); the log domain does not."""
    torch.manual_seed(1)
    x, w = unit(2, 6, 16), unit(301, 16, scale=12.0)  # trained prototype norms g = 12
    x[0, 0] = -w[0] / 12  # a row whose logits all sit far below the largest ones
    t = (x.float().double() @ w.float().double().t()).reshape(12, 301)
    assert t.abs().max() > 11.5
    assert not torch.isfinite(single_shift_fp32(t, 0.04)).all()  # the old scheme fails on this input
    p = sinkhorn_knopp(x.float(), w.float(), 0.04, 3, chunk=64, backend=backend).materialize().reshape(12, 301)
    assert torch.isfinite(p).all()
    assert_close(p, sinkhorn_knopp_ref(t, 0.04, 3), atol=1e-5, rtol=1e-3, name=f"|t| = 12, T = 0.04, {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_features_fp32_prototypes(backend):
    x, w = unit(2, 9, 16), unit(300, 16, scale=3.0)
    p = sinkhorn_knopp(x.bfloat16(), w.float(), 0.04, 3, chunk=128, backend=backend).materialize()
    # the matmul runs in bf16 (autocast semantics): the oracle sees the same rounded operands
    t = (x.bfloat16().double() @ w.bfloat16().double().t()).reshape(18, 300)
    assert torch.isfinite(p).all()
    assert_close(p.reshape(18, 300), definition64(t, 0.04), atol=2e-3, rtol=2e-2, name=f"bf16 {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_center_targets(backend):
    x, w = unit(2, 7, 16), unit(257, 16, scale=2.0)
    c = torch.randn(257, dtype=torch.float64) * 0.1
    got = softmax_center_targets(x.float(), w.float(), c.float(), 0.04, chunk=100, backend=backend).materialize()
    t = x.float().double() @ w.float().double().t()
    assert_close(got, torch.softmax((t - c.float().double()) / 0.04, -1), atol=1e-6, rtol=1e-4, name="softmax")


def test_n_rows_and_errors():
    x, w = unit(1, 6, 8), unit(50, 8)
    p = sinkhorn_knopp(x, w, 0.1, 2, n_rows=6).materialize()[0]
    assert_close(p, definition64(x[0] @ w.t(), 0.1, 2), atol=1e-10, name="n_rows")
    p = sinkhorn_knopp(x, w, 0.1, 2, n_rows=12).materialize()[0]  # as if a second rank held 6 more rows
    assert_close(p.sum(-1), torch.ones(6, dtype=p.dtype), atol=1e-10, name="rows sum to 1")
    assert math.isclose(float(p.sum()), 6.0, rel_tol=1e-9)
    with pytest.raises(ValueError, match="n_iters >= 1, got 0"):
        sinkhorn_knopp(x, w, 0.1, 0)
    with pytest.raises(ValueError, match=r"\(6, 8\)"):
        sinkhorn_knopp(x[0], w, 0.1)
    with pytest.raises(ValueError, match="positive, got 0"):
        sinkhorn_knopp(x, w, 0.0)
