"""DINOHead (meta build, cosine logits, DINOv2 names) and the EMA teacher update and schedules."""

import math

import pytest
import torch

from fastvit.models.heads import DINOHead
from fastvit.objectives.teacher import (
    cosine_schedule,
    ema_update_,
    last_layer_lr,
    momentum_schedule,
    teacher_temp_schedule,
)
from fastvit.testing import assert_close


def test_head_meta_build_and_logits():
    with torch.device("meta"):
        head = DINOHead(24, out_dim=301, hidden_dim=32, bottleneck_dim=16)
    head.to_empty(device="cpu")
    head.init_weights()
    names = {n for n, _ in head.named_parameters()}
    expected = {f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")} | {"last_layer.weight"}
    assert names == expected  # DINOv2: mlp.0/2/4 and last_layer.weight_v -> last_layer.weight
    assert head.last_layer.weight.shape == (301, 16)
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    head = head.double()
    h = x
    for m in head.mlp:
        h = m(h)
    v = head.last_layer.weight
    expected_logits = (h / h.norm(dim=-1, keepdim=True)) @ (v / v.norm(dim=1, keepdim=True)).t()
    assert_close(head(x), expected_logits, atol=1e-12, name="logits")
    assert_close(head.prototype_logits(x).materialize(), expected_logits, atol=1e-12, name="factored")
    assert head.prototype_logits(x).shape == (3, 5, 301)
    assert isinstance(head.mlp[1], torch.nn.GELU)
    assert torch.isfinite(head.features(torch.zeros(2, 24, dtype=torch.float64))).all()


def test_head_errors():
    with pytest.raises(ValueError, match="n_layers >= 1, got 0"):
        DINOHead(8, 10, n_layers=0)


def test_ema_update():
    student = [torch.randn(4, 3), torch.randn(7)]
    teacher = [torch.randn(4, 3), torch.randn(7)]
    expected = [0.9 * t + 0.1 * s for t, s in zip(teacher, student)]
    ema_update_(teacher, student, 0.9)
    for a, b in zip(teacher, expected):
        assert_close(a, b, atol=1e-6, name="ema")
    with pytest.raises(ValueError, match=r"\(4, 3\) != student \(3, 4\)"):
        ema_update_([torch.zeros(4, 3)], [torch.zeros(3, 4)], 0.9)


def test_ema_update_parameters_in_place():
    s, t = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = t.weight.detach().clone()
    ema_update_(t.parameters(), s.parameters(), 0.5)
    assert_close(t.weight, 0.5 * before + 0.5 * s.weight.detach(), atol=1e-7, name="param ema")


def test_schedules_endpoints():
    assert momentum_schedule(0, 100) == pytest.approx(0.994)
    assert momentum_schedule(100, 100) == pytest.approx(1.0)
    assert momentum_schedule(50, 100) == pytest.approx(0.997)
    assert teacher_temp_schedule(0, 37500) == pytest.approx(0.04)
    assert teacher_temp_schedule(18750, 37500) == pytest.approx(0.055)
    assert teacher_temp_schedule(37500, 37500) == pytest.approx(0.07)
    assert teacher_temp_schedule(10**6, 37500) == pytest.approx(0.07)
    lr = lambda s: cosine_schedule(s, 1000, 3.5e-4, 1e-6, warmup_steps=100)
    assert lr(0) == 0.0 and lr(50) == pytest.approx(1.75e-4) and lr(100) == pytest.approx(3.5e-4)
    assert lr(550) == pytest.approx(1e-6 + 0.5 * (3.5e-4 - 1e-6) * (1 + math.cos(math.pi * 0.5)))
    assert lr(1000) == pytest.approx(1e-6) and lr(2000) == pytest.approx(1e-6)
    assert cosine_schedule(0, 10, 0.04, 0.2) == pytest.approx(0.04)
    assert cosine_schedule(10, 10, 0.04, 0.2) == pytest.approx(0.2)
    assert last_layer_lr(1249, 1250, 1e-3) == 0.0 and last_layer_lr(1250, 1250, 1e-3) == 1e-3
    with pytest.raises(ValueError, match="200, 100"):
        cosine_schedule(0, 100, 1.0, 0.0, warmup_steps=200)
