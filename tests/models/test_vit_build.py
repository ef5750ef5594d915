"""Size table, exact parameter counts on the meta device, overrides and init_weights."""

import pytest
import torch

from fastvit.models import VIT_SIZES, build_vit, num_params, swiglu_hidden, vit_config

# Exact counts at 224 px (patch 14, 257 positions, mask token included), and the Web-SSL paper's rounded values.
EXACT = {
    "vit_s": 21_629_184,  # DINOv2 ViT-S/14 (22,056,576 at 518 px)
    "vit_b": 85_725_696,
    "vit_l": 303_228_928,  # DINOv2 ViT-L/14 (304,368,640 at 518 px)
    "vit_300m": 303_655_168,
    "vit_1b": 1_134_771_200,
    "vit_2b": 2_084_237_568,
    "vit_3b": 2_948_317_184,
    "vit_5b": 4_938_338_816,
    "vit_7b": 6_450_170_880,
}
TABLE_M = {"vit_300m": 303.7, "vit_1b": 1134.8, "vit_2b": 2084.2, "vit_3b": 2948.3, "vit_5b": 4938.3, "vit_7b": 6450.2}
TABLE_H = {"vit_300m": 2736, "vit_1b": 4096, "vit_2b": 7168, "vit_3b": 8192, "vit_5b": 9560, "vit_7b": 10928}


def formula_count(cfg):
    d, h, n = cfg.width, cfg.mlp_hidden, cfg.grid**2
    embed = d + (1 + n) * d + d + 3 * cfg.patch_size**2 * d + d + 2 * d  # cls, pos, mask, patch w+b, norm
    mlp = (2 * h * d + 2 * h + h * d + d) if cfg.mlp == "swiglu" else (2 * h * d + h + d)
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + mlp + 2 * d  # norm1, qkv, proj, ls1+ls2, mlp, norm2
    return embed + cfg.depth * block


@pytest.mark.parametrize("name", list(VIT_SIZES))
def test_meta_param_counts_are_exact(name):
    model = build_vit(name, device="meta")
    assert all(p.is_meta for p in model.parameters())
    count = num_params(model)
    assert count == EXACT[name] == formula_count(model.cfg)
    if name in TABLE_M:
        assert round(count / 1e6, 1) == TABLE_M[name]
        assert model.cfg.mlp_hidden == TABLE_H[name] == swiglu_hidden(model.cfg.width)
        assert model.cfg.head_dim == (64 if model.cfg.width <= 1536 else 128)


def test_native_parameter_names():
    names = set(build_vit("vit_1b", device="meta").state_dict())
    for key in (
        "cls_token",
        "pos_embed",
        "mask_token",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "blocks.39.norm1.weight",
        "blocks.39.attn.qkv.weight",
        "blocks.39.attn.qkv.bias",
        "blocks.39.attn.proj.weight",
        "blocks.39.ls1.gamma",
        "blocks.39.norm2.bias",
        "blocks.39.mlp.w12.weight",
        "blocks.39.mlp.w3.bias",
        "blocks.39.ls2.gamma",
    ):
        assert key in names, key


def test_overrides():
    m = build_vit("vit_7b", device="meta", dtype=torch.bfloat16, img_size=518, n_registers=4, qkv_bias=False)
    assert m.pos_embed.shape == (1, 1 + 37 * 37, 4096) and m.pos_embed.dtype == torch.bfloat16
    assert m.register_tokens.shape == (1, 4, 4096) and m.blocks[0].attn.qkv.bias is None
    mae = build_vit("vit_l", device="meta", patch_size=16, mlp="gelu", layerscale_init=None)
    assert mae.blocks[0].mlp.fc1.weight.shape == (4096, 1024) and mae.pos_embed.shape[1] == 1 + 14 * 14
    assert not any("ls1" in k for k in mae.state_dict())
    assert vit_config("vit_s", width=64, mlp="swiglu").mlp_hidden == swiglu_hidden(64) == 176
    with pytest.raises(ValueError, match="patch_sz"):
        build_vit("vit_s", device="meta", patch_sz=16)
    with pytest.raises(ValueError, match="vit_9b"):
        build_vit("vit_9b", device="meta")
    with pytest.raises(ValueError, match="not a multiple"):
        build_vit("vit_s", device="meta", img_size=100)


def test_init_weights_after_to_empty():
    m = build_vit("vit_s", device="meta", width=96, depth=2, heads=3, mlp="swiglu", img_size=56)
    m.to_empty(device="cpu")
    m.init_weights()
    w = m.blocks[1].mlp.w12.weight
    assert 0.0195 < w.std() < 0.0205 and w.abs().max() > 0.06  # normal(0.02), as DINOv2 / timm (not cut at +-2 std)
    assert (m.blocks[1].mlp.w12.bias == 0).all() and (m.blocks[0].attn.qkv.bias == 0).all()
    assert torch.equal(m.blocks[0].ls1.gamma, torch.full((96,), 1e-5))
    assert (m.mask_token == 0).all() and m.cls_token.abs().max() < 1e-4
    assert 0.018 < m.pos_embed.std() < 0.022 and (m.norm.weight == 1).all()
    assert m.patch_embed.proj.weight.abs().max() <= (3 * 14 * 14) ** -0.5 + 1e-7  # torch's conv default
    assert torch.isfinite(m(torch.randn(1, 3, 56, 56))["cls"]).all()
