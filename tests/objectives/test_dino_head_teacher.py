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
    expected = {f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert names == expected | {"last_layer.weight_g", "last_layer.weight_v"}  # DINOv2's names
    assert head.last_layer.weight_v.shape == (301, 16) and head.last_layer.weight_g.shape == (301, 1)
    assert torch.equal(head.last_layer.weight_g, torch.ones(301, 1))  # DINOv2 initialises g to 1
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    head = head.double()
    with torch.no_grad():
        head.last_layer.weight_g.uniform_(0.5, 4.0)  # trained norms: logits no longer bounded by 1
    h = x
    for m in head.mlp:
        h = m(h)
    v, g = head.last_layer.weight_v, head.last_layer.weight_g
    expected_logits = (h / h.norm(dim=-1, keepdim=True)) @ (g * v / v.norm(dim=1, keepdim=True)).t()
    assert_close(head(x), expected_logits, atol=1e-12, name="logits")
    assert_close(head.prototype_logits(x).materialize(), expected_logits, atol=1e-12, name="factored")
    assert head.prototype_logits(x).shape == (3, 5, 301)
    assert head(x).abs().max() > 1.0
    assert isinstance(head.mlp[1], torch.nn.GELU)
    assert torch.isfinite(head.features(torch.zeros(2, 24, dtype=torch.float64))).all()


@pytest.mark.parametrize("api", ["weight_norm", "parametrizations"])
def test_last_layer_is_dinov2_weight_norm(api):
    """Outputs and the gradients of g and v equal torch.nn.utils.weight_norm's (DINOv2's last layer), or
    torch.nn.utils.parametrizations.weight_norm's, with g initialised to 1 and then moved off it."""
    torch.manual_seed(0)
    ref = torch.nn.Linear(16, 37, bias=False).double()
    if api == "weight_norm":
        ref = torch.nn.utils.weight_norm(ref)
        g_ref, v_ref = ref.weight_g, ref.weight_v
    else:
        ref = torch.nn.utils.parametrizations.weight_norm(ref)
        g_ref, v_ref = ref.parametrizations.weight.original0, ref.parametrizations.weight.original1
    with torch.no_grad():
        g_ref.fill_(1.0)  # DINOv2: self.last_layer.weight_g.data.fill_(1)
        g_ref.mul_(torch.rand(37, 1, dtype=torch.float64) + 0.5)  # as after training steps
    head = DINOHead(8, out_dim=37, hidden_dim=12, bottleneck_dim=16).double()
    head.last_layer.load_state_dict({"weight_g": g_ref.detach().clone(), "weight_v": v_ref.detach().clone()})
    x = torch.randn(5, 16, dtype=torch.float64)
    w = torch.randn(5, 37, dtype=torch.float64)
    (ref(x) * w).sum().backward()
    out = head.last_layer(x)
    (out * w).sum().backward()
    assert_close(out, ref(x), atol=1e-12, name="outputs")
    assert_close(head.last_layer.weight_g.grad, g_ref.grad, atol=1e-12, name="grad g")
    assert_close(head.last_layer.weight_v.grad, v_ref.grad, atol=1e-12, name="grad v")
    assert head.last_layer.weight_g.grad.abs().max() > 0


def test_g_in_last_layer_group_frozen_then_weight_decayed():
    """g sits in the last-layer group: lr 0 while frozen, weight decay once it trains (DINOv2's param groups
    decay everything but biases, norms and gamma, and weight_g is none of those)."""
    from fastvit.config import OptimConfig
    from fastvit.train.optim import apply_schedule, build_optimizer

    head = DINOHead(8, out_dim=11, hidden_dim=12, bottleneck_dim=6)
    cfg = OptimConfig(lr=1e-3, warmup_steps=0, freeze_last_layer_steps=2, weight_decay=0.04, weight_decay_end=0.04)
    opt = build_optimizer(head.named_parameters(), depth=1, cfg_optim=cfg)
    (group,) = [g for g in opt.param_groups if "last_layer.weight_g" in g["names"]]
    assert group["last_layer"] and group["apply_wd"] and "last_layer.weight_v" in group["names"]
    apply_schedule(opt, 0, 10, cfg)
    assert group["lr"] == 0.0
    apply_schedule(opt, 2, 10, cfg)
    assert group["lr"] > 0 and group["weight_decay"] == pytest.approx(0.04)


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
