"""Native Web-SSL / DINOv2 state dicts: key variants, strict shape checks, safe loading."""

import pytest
import torch

from fastvit.errors import UserError
from fastvit.interop import check_state, infer_config, load_native, load_state_file, normalize_native
from fastvit.models import build_vit


def tiny_state(depth=4):
    return build_vit("vit_s", width=32, depth=depth, heads=2, mlp="swiglu", img_size=28).state_dict()


def chunked(sd, chunks):
    per = len({k.split(".")[1] for k in sd if k.startswith("blocks.")}) // chunks
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            i, rest = k.split(".", 2)[1:]
            k = f"blocks.{int(i) // per}.{i}.{rest}"  # DINOv2 BlockChunk: chunk id, then the global block id
        out[k] = v
    return out


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: chunked(sd, 4),
        lambda sd: {
            "model": {f"teacher.backbone.{k}": v for k, v in chunked(sd, 2).items()}
            | {"teacher.ibot_head.last_layer.weight_g": torch.ones(4, 1)}
        },
        lambda sd: {"teacher": {f"backbone.{k}": v for k, v in sd.items()} | {"dino_head.mlp.0.bias": torch.ones(3)}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["flat", "chunked", "teacher-prefixed", "teacher-file", "ddp"],
)
def test_normalize_variants(wrap):
    sd = tiny_state()
    got = normalize_native(wrap(sd))
    assert got.keys() == sd.keys() and all(torch.equal(got[k], v) for k, v in sd.items())


def test_infer_config_and_load():
    sd = tiny_state(depth=3)
    cfg = infer_config(sd, heads=2)
    assert (cfg.width, cfg.depth, cfg.mlp, cfg.mlp_hidden, cfg.img_size, cfg.patch_size) == (
        32,
        3,
        "swiglu",
        88,
        28,
        14,
    )
    model = build_vit("vit_s", width=32, depth=3, heads=2, mlp="swiglu", img_size=28)
    load_native(model, chunked(sd, 3))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    meta = build_vit("vit_s", width=32, depth=3, heads=2, mlp="swiglu", img_size=28, device="meta")
    assert not load_native(meta, sd).pos_embed.is_meta
    assert infer_config(build_vit("vit_1b", device="meta").state_dict()).heads == 24  # unique table row


def test_shape_mismatch_names_first_key_and_both_shapes():
    model = build_vit("vit_s", width=32, depth=2, heads=2, mlp="swiglu", img_size=28)
    sd = tiny_state(depth=2)
    sd["blocks.1.mlp.w3.weight"] = torch.zeros(32, 80)
    sd["norm.weight"] = torch.zeros(33)
    with pytest.raises(ValueError, match=r"'blocks\.1\.mlp\.w3\.weight' has shape \(32, 80\) .* expects \(32, 88\)"):
        load_native(model, sd)
    with pytest.raises(ValueError, match="missing keys \\['blocks.3"):
        check_state(tiny_state(depth=4), tiny_state(depth=3))


class _Payload:
    pass


def test_loading_is_safe(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"x": torch.ones(1), "obj": _Payload()}, f)
    with pytest.raises(UserError, match="holds more than tensors"):
        load_state_file(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_state_file(tmp_path / "missing.pth")
