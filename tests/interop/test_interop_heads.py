"""DINO / iBOT heads of DINOv2 / Web-SSL checkpoints: weight_g / weight_v read into DINOHead and written back."""

import pytest
import torch

from fastvit.interop import head_state_from_native, head_state_to_native, load_head
from fastvit.models.heads import DINOHead


def dinov2_head_state(prefix, K=23, D=6, parametrized=False):
    """A DINOv2-style checkpoint fragment: mlp.0/2/4 + a weight-normalised last layer with trained g."""
    head = DINOHead(10, out_dim=K, hidden_dim=12, bottleneck_dim=D)
    sd = {k: v for k, v in head.state_dict().items() if not k.startswith("last_layer")}
    g, v = torch.rand(K, 1) + 0.5, torch.randn(K, D)
    names = ("parametrizations.weight.original0", "parametrizations.weight.original1") if parametrized else None
    g_name, v_name = names or ("weight_g", "weight_v")
    sd |= {f"last_layer.{g_name}": g, f"last_layer.{v_name}": v}
    return {f"{prefix}{k}": t for k, t in sd.items()}, g, v


@pytest.mark.parametrize("prefix", ["teacher.dino_head.", "student.ibot_head.", "dino_head."])
@pytest.mark.parametrize("parametrized", [False, True])
def test_read_load_and_write_back(prefix, parametrized):
    state, g, v = dinov2_head_state(prefix, parametrized=parametrized)
    head_name = "ibot_head" if "ibot" in prefix else "dino_head"
    checkpoint = {"model": state | {"teacher.backbone.cls_token": torch.zeros(1, 1, 10)}}
    head = load_head(DINOHead(10, out_dim=23, hidden_dim=12, bottleneck_dim=6), checkpoint, head_name)
    assert torch.equal(head.last_layer.weight_g, g) and torch.equal(head.last_layer.weight_v, v)
    x = torch.randn(4, 10)
    expected = torch.nn.functional.normalize(head.mlp(x), dim=-1) @ (g * v / v.norm(dim=1, keepdim=True)).t()
    torch.testing.assert_close(head(x), expected)
    back = head_state_to_native(head.state_dict(), head_name, prefix="teacher.")
    assert back[f"teacher.{head_name}.last_layer.weight_g"].shape == (23, 1)
    again = head_state_from_native(back, head_name)
    assert again.keys() == head.state_dict().keys()
    assert all(torch.equal(again[k], t) for k, t in head.state_dict().items())


def test_errors():
    state, _, _ = dinov2_head_state("teacher.dino_head.")
    with pytest.raises(ValueError, match="no ibot_head"):
        head_state_from_native(state, "ibot_head")
    del state["teacher.dino_head.last_layer.weight_g"]
    with pytest.raises(ValueError, match="not weight-normalised"):
        head_state_from_native(state, "dino_head")
    state, _, _ = dinov2_head_state("teacher.dino_head.")
    with pytest.raises(ValueError, match="last_layer.weight_v"):
        load_head(DINOHead(10, out_dim=24, hidden_dim=12, bottleneck_dim=6), state, "dino_head")
