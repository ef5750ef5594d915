"""One map from the config's model section to the ViT (fastvit.models.build): every key reaches the model, the
planner sizes the same model the tasks build, and model.attn_backend is the attention op's backend."""

import dataclasses

import pytest
import torch

import fastvit.ops
from fastvit.config import ModelConfig, load_config
from fastvit.models.build import NOT_VIT, backbone_config, build_backbone
from fastvit.models.vit import ViTConfig
from fastvit.parallel.plan import Layout, head_params, plan, planned_heads, static_memory


def test_every_model_key_reaches_the_vit():
    m = ModelConfig(
        name="vit_b",
        patch_size=16,
        img_size=64,
        width=96,
        depth=3,
        heads=4,
        n_registers=2,
        layerscale_init=None,
        drop_path=0.2,
        mlp="swiglu",
        qkv_bias=False,
        attn_backend="torch",
    )
    vit = backbone_config(m)
    for f in dataclasses.fields(m):
        if f.name not in NOT_VIT:  # model.init: the weights a run starts from, not the shape
            assert getattr(vit, f.name) == getattr(m, f.name), f.name
    assert vit.name == "vit_b" and vit.mlp_hidden == 256  # SwiGLU rule for the overridden width
    table = backbone_config(ModelConfig(name="vit_1b"))  # 0 / "": the size table's width, depth, heads, MLP
    assert (table.width, table.depth, table.heads, table.mlp, table.mlp_hidden) == (1536, 40, 24, "swiglu", 4096)
    model = build_backbone(m)
    assert model.cfg == vit and all(p.is_meta for p in model.parameters())
    assert model.blocks[0].attn.qkv.bias is None and model.register_tokens.shape == (1, 2, 96)


def test_a_model_key_without_a_vit_field_is_refused():
    @dataclasses.dataclass(kw_only=True)
    class WithExtra(ModelConfig):
        rope_base: float = 100.0

    with pytest.raises(ValueError, match="rope_base"):
        backbone_config(WithExtra())
    assert {f.name for f in dataclasses.fields(ModelConfig)} - set(NOT_VIT) <= {
        f.name for f in dataclasses.fields(ViTConfig)
    }


def test_the_planner_sizes_the_model_the_tasks_build():
    overrides = ["model.name=vit_1b", "model.qkv_bias=false", "model.layerscale_init=null"]
    cfg = load_config("web_dino_vit1b", overrides)
    vit, rows = plan(cfg, 8, "h100", 64)
    assert vit == build_backbone(cfg.model).cfg
    lay = Layout(dp=8, tp=1, pp=1, ac="full")
    with_bias = static_memory(
        backbone_config(load_config("web_dino_vit1b")), head_params(1536, planned_heads(cfg)), lay
    )
    without = static_memory(vit, head_params(1536, planned_heads(cfg)), lay)
    per_block = 3 * 1536 + 2 * 1536  # qkv bias, two LayerScale gammas
    assert with_bias["params"] - without["params"] == pytest.approx(4 * 40 * per_block / 8)


@pytest.mark.parametrize("packed", [False, True])
def test_attn_backend_is_the_attention_ops_backend(monkeypatch, packed):
    seen = []
    real = fastvit.ops.attention

    def spy(*args, backend="auto", **kw):
        seen.append(backend)
        return real(*args, backend=backend, **kw)

    monkeypatch.setattr(fastvit.ops, "attention", spy)
    m = ModelConfig(name="vit_s", width=32, depth=2, heads=2, img_size=28, attn_backend="torch")
    model = build_backbone(m, device="cpu").eval()
    x = torch.randn(2, 3, 28, 28)
    model([x]) if packed else model(x)
    assert seen == ["torch", "torch"]
    with pytest.raises(ValueError, match="model.attn_backend='cudnn'"):
        build_backbone(dataclasses.replace(m, attn_backend="cudnn"))
