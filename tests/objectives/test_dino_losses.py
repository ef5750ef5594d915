"""softmax_center, Centering, dino_cross_entropy, ibot_patch_loss and koleo_loss against float64 definitions."""

import pytest
import torch
import torch.nn.functional as F

from fastvit.objectives.dino import (
    Centering,
    dino_cross_entropy,
    ibot_masks_weight,
    ibot_patch_loss,
    koleo_loss,
    softmax_center,
)
from fastvit.testing import assert_close


def ce64(s, p, temp):  # [R] -sum p log_softmax(s / temp)
    return -(p.double() * torch.log_softmax(s.double() / temp, dim=-1)).sum(-1)


def test_softmax_center():
    t, c = torch.randn(5, 37, dtype=torch.float64), torch.randn(37, dtype=torch.float64)
    p = softmax_center(t.bfloat16(), c.float(), 0.04)
    assert p.dtype == torch.float32
    expected = torch.exp((t.bfloat16().double() - c.float().double()) / 0.04)
    assert_close(p, expected / expected.sum(-1, keepdim=True), atol=1e-6, name="softmax_center")


def test_centering_ema():
    center = Centering(7, momentum=0.9)
    t1, t2 = torch.randn(4, 7), torch.randn(6, 7)
    center.update(t1)
    center.update(t2)
    expected = 0.9 * (0.1 * t1.double().mean(0)) + 0.1 * t2.double().mean(0)
    assert_close(center.center, expected, atol=1e-6, name="center")
    center.update(torch.zeros(0, 7))  # no rows anywhere: unchanged
    assert_close(center.center, expected, atol=1e-6, name="center after empty")
    assert "center" in center.state_dict()


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_dino_cross_entropy(backend):
    s64 = torch.randn(2, 9, 301, dtype=torch.float64)
    p64 = torch.softmax(torch.randn(2, 9, 301, dtype=torch.float64), -1)
    s = s64.float().requires_grad_()
    loss = dino_cross_entropy(s, p64.float(), 0.1, backend=backend)
    loss.backward()
    s_ref = s64.clone().requires_grad_()
    expected = ce64(s_ref, p64, 0.1).mean()
    expected.backward()
    assert_close(loss, expected, atol=1e-5, name="dino ce")
    assert_close(s.grad, s_ref.grad, atol=1e-6, rtol=1e-4, name="dino ce grad")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_ibot_patch_loss(backend):
    masks = torch.zeros(4, 10, dtype=torch.bool)
    masks[0, [1, 3, 4]] = True
    masks[2, [0, 9]] = True  # images 1 and 3 unmasked: they still count in n_images
    M, K = int(masks.sum()), 257
    s64, p64 = torch.randn(M, K, dtype=torch.float64), torch.softmax(torch.randn(M, K, dtype=torch.float64), -1)
    w = ibot_masks_weight(masks)
    assert_close(w, torch.tensor([1 / 3] * 3 + [1 / 2] * 2), atol=1e-7, name="masks_weight")
    s = s64.float().requires_grad_()
    loss = ibot_patch_loss(s, p64.float(), w, 4, 0.1, backend=backend)
    loss.backward()
    s_ref = s64.clone().requires_grad_()
    expected = (ce64(s_ref, p64, 0.1) * w.double()).sum() / 4
    expected.backward()
    assert_close(loss, expected, atol=1e-5, name="ibot")
    assert_close(s.grad, s_ref.grad, atol=1e-6, rtol=1e-4, name="ibot grad")


def koleo64(x):
    x = F.normalize(x.double(), dim=-1)
    n = x.shape[0]
    dists = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        nearest = max(others, key=lambda j: float(x[i].detach() @ x[j].detach()))
        dists.append(torch.sqrt(((x[i] - x[nearest]) ** 2).sum()))
    return -torch.log(torch.stack(dists) + 1e-8).mean()


def test_koleo_matches_definition():
    x = torch.randn(11, 24, dtype=torch.float64)
    xf = x.float().requires_grad_()
    loss = koleo_loss(xf)
    loss.backward()
    x_ref = x.clone().requires_grad_()
    expected = koleo64(x_ref)
    expected.backward()
    assert_close(loss, expected, atol=1e-5, name="koleo")
    assert_close(xf.grad, x_ref.grad, atol=1e-4, rtol=1e-3, name="koleo grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_koleo_finite_with_duplicate_rows(dtype):
    x = torch.randn(6, 16)
    x[3] = x[1]
    x[5] = x[1]
    x = x.to(dtype).requires_grad_()
    loss = koleo_loss(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert loss.item() > 0
    with pytest.raises(ValueError, match=r"\(1, 16\)"):
        koleo_loss(torch.randn(1, 16))
