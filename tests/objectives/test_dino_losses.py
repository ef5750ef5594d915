"""softmax_center, Centering, ibot_masks_weight and koleo_loss against float64 definitions (the cross-entropies:
tests/kernels/test_prototype_cross_entropy.py and test_web_dino_objective.py)."""

import pytest
import torch
import torch.nn.functional as F

from fastvit.objectives.dino import Centering, ibot_masks_weight, koleo_loss, softmax_center
from fastvit.testing import assert_close


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


def test_ibot_masks_weight():
    masks = torch.zeros(4, 10, dtype=torch.bool)
    masks[0, [1, 3, 4]] = True
    masks[2, [0, 9]] = True  # images 1 and 3 unmasked
    assert_close(ibot_masks_weight(masks), torch.tensor([1 / 3] * 3 + [1 / 2] * 2), atol=1e-7, name="masks_weight")


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
