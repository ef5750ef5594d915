"""Chunked prototype loss and factored teacher targets against the materialised float64 computation."""

import pytest
import torch
import torch.nn.functional as F

from fastvit.ops.prototype_cross_entropy import _fwd_op, prototype_cross_entropy
from fastvit.ops.prototype_targets import TeacherTargets, sinkhorn_targets, softmax_center_targets
from fastvit.ops.sinkhorn import sinkhorn_knopp
from fastvit.testing import assert_close


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("K,chunk", [(301, 64), (1000, 1000), (257, 300)])
def test_targets_equal_materialised(K, chunk):
    xt, wt = unit(2, 7, 16), unit(K, 16)
    t = xt @ wt.t()  # [2, 7, K]
    sk = sinkhorn_targets(xt.float(), wt.float(), 0.05, 3, chunk=chunk).materialize()
    assert_close(sk, sinkhorn_knopp(t.reshape(14, K), 0.05).reshape(2, 7, K), atol=1e-6, rtol=1e-4, name="sinkhorn")
    c = torch.randn(K, dtype=torch.float64) * 0.1
    sm = softmax_center_targets(xt.float(), wt.float(), c.float(), 0.04, chunk=chunk).materialize()
    assert_close(sm, torch.softmax((t - c) / 0.04, -1), atol=1e-6, rtol=1e-4, name="softmax center")


def loss64(xs, ws, p, temp, row_w):  # [S, T] = sum_b w_b * -sum_k p[t, b] log_softmax(xs ws^T / temp)[s, b]
    lsm = torch.log_softmax(xs @ ws.t() / temp, dim=-1)
    return (-(p[None] * lsm[:, None]).sum(-1) * row_w).sum(-1)


@pytest.mark.parametrize("S,T,B,K,chunk", [(5, 2, 7, 301, 64), (1, 1, 13, 1000, 333), (3, 2, 1, 17, 4)])
def test_loss_and_grads_match_float64(S, T, B, K, chunk):
    xs, ws, xt, wt = unit(S, B, 16), unit(K, 16), unit(T, B, 16), unit(K, 16)
    targets = sinkhorn_targets(xt, wt, 0.05, 3)
    row_w = torch.rand(B, dtype=torch.float64)
    g = torch.randn(S, T, dtype=torch.float64)
    a, w = xs.float().requires_grad_(), ws.float().requires_grad_()
    L = prototype_cross_entropy(a, w, targets, 0.1, row_w.float(), chunk=chunk)
    (L * g.float()).sum().backward()
    a_ref, w_ref = xs.clone().requires_grad_(), ws.clone().requires_grad_()
    expected = loss64(a_ref, w_ref, targets.materialize(), 0.1, row_w)
    (expected * g).sum().backward()
    assert L.shape == (S, T) and L.dtype == torch.float32
    assert_close(L, expected, atol=1e-5, rtol=1e-5, name="loss")
    assert_close(a.grad, a_ref.grad, atol=1e-5, rtol=1e-4, name="grad features")
    assert_close(w.grad, w_ref.grad, atol=1e-5, rtol=1e-4, name="grad prototypes")


def test_fake_and_autograd_registration():
    xs, ws, xt, wt = (t.float() for t in (unit(2, 3, 8), unit(40, 8), unit(1, 3, 8), unit(40, 8)))
    tg = sinkhorn_targets(xt, wt, 0.1)
    args = (xs.requires_grad_(), ws.requires_grad_(), tg.features, tg.prototypes, tg.a, tg.b, torch.ones(3) / 3)
    torch.library.opcheck(_fwd_op, (*args, tg.inv_temp, 0.1, 16))


def test_errors():
    xs, ws = unit(2, 3, 8), unit(40, 8)
    tg = TeacherTargets(unit(1, 4, 8), ws, 10.0, torch.zeros(40), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="B = 3"):
        prototype_cross_entropy(xs, ws, tg, 0.1)
    with pytest.raises(ValueError, match="n_iters >= 1, got 0"):
        sinkhorn_targets(unit(1, 4, 8), ws, 0.1, 0)
