"""Hugging Face Dinov2Model <-> fastvit: same last hidden state (fp32, 1e-5) both ways, and the CLI."""

import pytest
import torch

from fastvit.interop import (
    config_from_hf,
    detect_layout,
    hf_config_dict,
    hf_to_native,
    load_native,
    load_state_file,
    native_to_hf,
    save_state_file,
)
from fastvit.interop.convert import main
from fastvit.models import VisionTransformer, build_vit
from fastvit.testing import assert_close

transformers = pytest.importorskip("transformers")


def hf_model(mlp="swiglu", img=28):
    cfg = transformers.Dinov2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=4,
        use_swiglu_ffn=mlp == "swiglu",
        image_size=img,
        patch_size=14,
        layerscale_value=1e-5,
        qkv_bias=True,
    )
    model = transformers.Dinov2Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 and p.shape[0] == 64 else 0.0))
    return model


def randomized(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def ours_flat(model, x, masks=None):
    out = model(x, masks)
    return torch.cat([out["cls"][:, None], out["patch"]], dim=1)


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
@pytest.mark.parametrize("res", [28, 56])
def test_hf_to_fastvit_same_hidden_state(mlp, res):
    hf = hf_model(mlp)
    ours = VisionTransformer(config_from_hf(hf.config)).eval()
    load_native(ours, hf_to_native(hf.state_dict()))
    x = torch.randn(2, 3, res, res)
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state
        masks = torch.rand(2, (res // 14) ** 2) < 0.5
        want_masked = hf(pixel_values=x, bool_masked_pos=masks).last_hidden_state
    assert_close(ours_flat(ours, x), want, atol=1e-5, name=f"{mlp} {res}px")
    assert_close(ours_flat(ours, x, masks), want_masked, atol=1e-5, name=f"{mlp} {res}px masked")


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_fastvit_to_hf_same_hidden_state(mlp):
    ours = randomized(build_vit("vit_s", width=64, depth=2, heads=4, mlp=mlp, img_size=28))
    hf = transformers.Dinov2Model(transformers.Dinov2Config(**hf_config_dict(ours.cfg))).eval()
    layout = detect_layout(hf.state_dict())
    hf.load_state_dict(native_to_hf(ours.state_dict(), layout), strict=True)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert_close(ours_flat(ours, x), hf(pixel_values=x).last_hidden_state, atol=1e-5, name=mlp)
    for other in ("hub", "modular"):  # both name layouts invert exactly
        back = hf_to_native(native_to_hf(ours.state_dict(), other))
        assert back.keys() == ours.state_dict().keys()
        assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_no_layerscale_exports_unit_lambda():
    ours = randomized(build_vit("vit_s", width=64, depth=1, heads=4, img_size=28, layerscale_init=None))
    hf_sd = native_to_hf(ours.state_dict(), "hub")
    assert torch.equal(hf_sd["encoder.layer.0.layer_scale1.lambda1"], torch.ones(64))
    back = hf_to_native(hf_sd, drop_unit_layerscale=True)
    assert back.keys() == ours.state_dict().keys()


def test_cli_teacher_checkpoint_to_hf_folder_and_back(tmp_path):
    ours = randomized(build_vit("vit_s", width=64, depth=4, heads=4, mlp="swiglu", img_size=28))
    sd = ours.state_dict()
    # DINOv2 training layout: teacher prefix, 2 block chunks with global block ids, heads alongside
    ckpt = {f"teacher.backbone.{k}" if not k.startswith("blocks.") else None: v for k, v in sd.items()}
    ckpt.pop(None, None)
    for k, v in sd.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            ckpt[f"teacher.backbone.blocks.{i // 2}.{k.split('.', 1)[1]}"] = v
    ckpt["teacher.dino_head.mlp.0.weight"] = torch.randn(8, 64)
    ckpt["student.backbone.cls_token"] = torch.zeros(1, 1, 64)
    torch.save({"model": ckpt, "iteration": 3}, tmp_path / "teacher.pth")
    assert main([str(tmp_path / "teacher.pth"), str(tmp_path / "hf"), "--heads", "4"]) == 0
    hf = transformers.Dinov2Model.from_pretrained(str(tmp_path / "hf")).eval()  # hub names, renamed by transformers
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert_close(ours_flat(ours, x), hf(pixel_values=x).last_hidden_state, atol=1e-5, name="from_pretrained")
    assert main([str(tmp_path / "hf"), str(tmp_path / "back.safetensors")]) == 0
    back = load_state_file(tmp_path / "back.safetensors")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], v) for k, v in sd.items())


def test_cli_rejects_mismatched_size(tmp_path, capsys):
    ours = build_vit("vit_s", width=64, depth=2, heads=4, img_size=28)
    save_state_file(ours.state_dict(), tmp_path / "tiny.safetensors")
    assert main([str(tmp_path / "tiny.safetensors"), str(tmp_path / "out"), "--model", "vit_s"]) == 2
    err = capsys.readouterr().err
    assert "'cls_token'" in err and "(1, 1, 64)" in err and "(1, 1, 384)" in err
    assert main([str(tmp_path / "tiny.safetensors"), str(tmp_path / "out")]) == 2  # heads unknown for width 64
    assert "heads" in capsys.readouterr().err
