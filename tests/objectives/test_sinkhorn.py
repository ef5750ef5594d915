"""Sinkhorn-Knopp: streamed kernels vs the written definition in float64 (multi-rank: test_multirank_objective)."""

import pytest
import torch
from fastvit.kernels.sinkhorn import sinkhorn_knopp_ref

from fastvit.objectives.dino import sinkhorn_knopp
from fastvit.testing import assert_close


def definition64(t, temp, n_iters=3, n_rows=None):
    """DINOv2's SinkhornKnopp definition, one process, float64 (no max shift)."""
    Q = torch.exp(t.double() / temp).t()  # [K, B]
    K, B = Q.shape
    B = B if n_rows is None else n_rows
    Q = Q / Q.sum()
    for _ in range(n_iters):
        Q = Q / Q.sum(dim=1, keepdim=True) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / B
    return (Q * B).t()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("B,K", [(1, 17), (7, 301), (33, 1000)])
def test_matches_definition(backend, B, K):
    t = torch.randn(B, K, dtype=torch.float64)
    p = sinkhorn_knopp(t.float(), 0.05, 3, backend=backend)
    assert p.dtype == torch.float32 and p.shape == (B, K)
    assert_close(p, definition64(t, 0.05), atol=1e-6, rtol=1e-4, name=f"sinkhorn {backend}")
    assert_close(p.sum(-1), torch.ones(B), atol=1e-5, name="rows sum to 1")


def test_ref_bf16_input_and_large_logits():
    t = torch.randn(9, 300, dtype=torch.float64) * 0.3 + 5  # t / temp ~ 125: exp overflows fp32 without the shift
    p = sinkhorn_knopp(t.bfloat16(), 0.04, 3, backend="triton")
    assert torch.isfinite(p).all()
    assert_close(p, sinkhorn_knopp_ref(t.bfloat16().double(), 0.04, 3), atol=1e-5, rtol=1e-3, name="bf16")


def test_n_rows_and_errors():
    t = torch.randn(6, 50, dtype=torch.float64)
    p = sinkhorn_knopp(t.float(), 0.1, 2, n_rows=6)
    assert_close(p, definition64(t, 0.1, 2), atol=1e-6, rtol=1e-4, name="n_rows")
    with pytest.raises(ValueError, match="n_iters >= 1, got 0"):
        sinkhorn_knopp(t, 0.1, 0)
    with pytest.raises(ValueError, match=r"\(6, 50, 1\)"):
        sinkhorn_knopp(t[..., None], 0.1)
