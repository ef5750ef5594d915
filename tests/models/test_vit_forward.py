"""Dense, packed multi-crop, iBOT-masked and MAE forwards against a float64 reference, drop path, pos embed."""

import pytest
import torch
import torch.nn.functional as F

from fastvit.models import build_vit
from fastvit.models.layers import Packing, add_residual_subset, sample_keep
from fastvit.models.pos_embed import PosEmbedResampler
from fastvit.testing import assert_close


def tiny(**kw):
    """Width 64, depth 2, 4 heads, patch 14, native 42 px (3x3 grid); all params perturbed so every part matters."""
    cfg = dict(width=64, depth=2, heads=4, mlp="swiglu", img_size=42, layerscale_init=1.0)
    model = build_vit("vit_s", **{**cfg, **kw})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def reference(model, x, masks=None, keep=None):
    """The ViT computed the plain way in float64 from the state dict; keep (B, K) is emulated by letting
    only CLS, registers and kept tokens serve as attention keys (and returning the kept tokens)."""
    cfg, sd = model.cfg, {k: v.double() for k, v in model.state_dict().items()}
    p, d, g = cfg.patch_size, cfg.width, cfg.grid
    B, _, H, W = x.shape
    h, w = H // p, W // p
    patches = x.double().reshape(B, 3, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, 3 * p * p)
    tok = patches @ sd["patch_embed.proj.weight"].reshape(d, -1).T + sd["patch_embed.proj.bias"]
    if masks is not None:
        tok = torch.where(masks[..., None], sd["mask_token"][None], tok)
    pos = sd["pos_embed"][0, 1:]
    if (h, w) != (g, g):
        grid = pos.reshape(1, g, g, d).permute(0, 3, 1, 2)
        scale = ((h + cfg.interpolate_offset) / g, (w + cfg.interpolate_offset) / g)
        pos = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
        pos = pos.permute(0, 2, 3, 1).reshape(h * w, d)
    prefix = [(sd["cls_token"] + sd["pos_embed"][:, :1]).expand(B, 1, d)]
    if cfg.n_registers:
        prefix.append(sd["register_tokens"].expand(B, -1, -1))
    x = torch.cat(prefix + [tok + pos], dim=1)
    n_pre = 1 + cfg.n_registers
    attend = torch.ones(B, x.shape[1], dtype=torch.bool)
    if keep is not None:
        attend[:, n_pre:] = False
        attend[torch.arange(B)[:, None], n_pre + keep] = True
    ln = lambda t, pre: F.layer_norm(t, (d,), sd[pre + ".weight"], sd[pre + ".bias"], 1e-6)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        y = ln(x, b + "norm1")
        qkv = (y @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]).reshape(B, -1, 3, cfg.heads, d // cfg.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        s = (q @ k.transpose(-1, -2)) / (d // cfg.heads) ** 0.5
        s = s.masked_fill(~attend[:, None, None, :], float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, d)
        x = x + (o @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]) * sd[b + "ls1.gamma"]
        y = ln(x, b + "norm2") @ sd[b + "mlp.w12.weight"].T + sd[b + "mlp.w12.bias"]
        a, c = y.chunk(2, dim=-1)
        x = x + ((F.silu(a) * c) @ sd[b + "mlp.w3.weight"].T + sd[b + "mlp.w3.bias"]) * sd[b + "ls2.gamma"]
    x = ln(x, "norm")
    patch = x[:, n_pre:]
    if keep is not None:
        patch = torch.gather(patch, 1, keep[..., None].expand(-1, -1, d))
    return {"cls": x[:, 0], "registers": x[:, 1:n_pre], "patch": patch}


def check(out, ref, name, atol=1e-5):
    for key in ("cls", "registers", "patch"):
        assert_close(out[key], ref[key], atol=atol, name=f"{name} {key}")


@pytest.mark.parametrize("res", [42, 28, 56])
def test_dense_forward_matches_float64_reference(res):
    model = tiny(n_registers=2)
    x = torch.randn(2, 3, res, res)
    check(model(x), reference(model, x), f"dense {res}px")


def test_packed_crops_equal_per_crop_dense_forward():
    model = tiny()
    globals_ = [torch.randn(2, 3, 42, 42) for _ in range(2)]
    locals_ = [torch.randn(2, 3, 28, 28) for _ in range(4)]
    crops = globals_ + locals_
    masks = [torch.rand(2, 9) < 0.4, None] + [None] * 4
    packed = model.forward_crops(crops, masks)
    assert len(packed) == 6 and packed[2]["patch"].shape == (2, 4, 64)
    for i, (x, m) in enumerate(zip(crops, masks)):
        dense = model.forward_features(x, m)
        check(packed[i], dense, f"crop {i}")
        check(packed[i], reference(model, x, m), f"crop {i} vs float64")


def test_packed_gradients_reach_pos_embed_like_dense():
    model = tiny()
    crops = [torch.randn(2, 3, 42, 42), torch.randn(3, 3, 28, 28), torch.randn(1, 3, 56, 56)]
    named = [(n, p) for n, p in model.named_parameters() if n != "mask_token"]  # no masks: mask token unused
    params = [p for _, p in named]
    loss = sum(o["patch"].pow(2).sum() + o["cls"].sum() for o in model(crops))
    grads_packed = torch.autograd.grad(loss, params)
    loss = sum(model(x)["patch"].pow(2).sum() + model(x)["cls"].sum() for x in crops)
    grads_dense = torch.autograd.grad(loss, params)
    for (name, _), gp, gd in zip(named, grads_packed, grads_dense):
        assert_close(gp, gd, atol=1e-4, rtol=1e-4, name=name)
    assert named[1][0] == "pos_embed" and grads_packed[1][0, 1:].abs().min() > 0


@pytest.mark.parametrize("offset", [0.1, 0.0])
@pytest.mark.parametrize("grid_in, grid_out", [((16, 16), (7, 7)), ((3, 3), (2, 5)), ((4, 4), (37, 37))])
def test_pos_embed_resampler_equals_interpolate_and_tracks_the_parameter(offset, grid_in, grid_out):
    resample = PosEmbedResampler(offset)
    pos = torch.randn(1, grid_in[0] * grid_in[1], 8, requires_grad=True)
    grid = lambda t: t.detach().double().reshape(1, *grid_in, 8).permute(0, 3, 1, 2)
    kw = (
        dict(size=grid_out)
        if offset == 0
        else dict(scale_factor=tuple((o + offset) / i for o, i in zip(grid_out, grid_in)))
    )
    for _ in range(2):  # second call uses the cached matrices on updated values
        want = F.interpolate(grid(pos), mode="bicubic", align_corners=False, **kw).permute(0, 2, 3, 1).reshape(1, -1, 8)
        assert_close(resample(pos, grid_in, grid_out), want, atol=1e-5, rtol=1e-5, name="resampled pos embed")
        with torch.no_grad():
            pos.mul_(-2.0).add_(1.0)
    assert len(resample._cache) == 1
    resample(pos, grid_in, grid_out).sum().backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0


def test_ibot_masked_patches_ignore_their_pixels():
    model = tiny()
    x = torch.randn(2, 3, 42, 42)
    masks = torch.zeros(2, 9, dtype=torch.bool)
    masks[0, [0, 4]] = masks[1, 8] = True
    out = model(x, masks)
    check(out, reference(model, x, masks), "masked")
    x2 = x.clone()
    x2[0, :, :14, :14] += 5.0  # patch 0 of image 0 (masked)
    x2[1, :, 28:, 28:] -= 3.0  # patch 8 of image 1 (masked)
    check(model(x2, masks), out, "masked pixels changed")
    assert (model(x2)["patch"] - model(x)["patch"]).abs().max() > 1e-3  # unmasked: pixels do matter


def test_mae_visible_forward():
    model = tiny(img_size=56)
    x = torch.randn(3, 3, 56, 56)
    keep = torch.stack([torch.randperm(16)[:5] for _ in range(3)])
    out = model(x, keep_idx=keep)
    assert out["patch"].shape == (3, 5, 64) and out["cls"].shape == (3, 64)
    check(out, reference(model, x, keep=keep), "visible-only vs key-restricted full forward")
    check(model(x, keep_idx=torch.arange(16).expand(3, 16)), model(x), "all patches kept")


def test_drop_path_subset_equals_zeroing_dense_and_packed():
    block = tiny().blocks[0]
    x = torch.randn(5, 7, 64)
    keep, scale = [0, 2, 3], 5 / 3
    seen = []

    def branch(t, pk):
        seen.append(t.shape[0])
        return block.attn_branch(t, pk)

    mask = torch.zeros(5, 1, 1)
    mask[keep] = 1.0
    want = x + scale * mask * block.attn_branch(x)
    assert_close(add_residual_subset(x, branch, keep, scale), want, atol=1e-6, name="dense subset")
    lens = [9, 9, 4, 4, 4, 4]
    packing = Packing.from_seqlens(lens, "cpu")
    x_TD = torch.randn(sum(lens), 64)
    keep = [1, 2, 5]
    token_mask = torch.cat([torch.full((n, 1), float(s in keep)) for s, n in enumerate(lens)])
    want = x_TD + 2.0 * token_mask * block.attn_branch(x_TD, packing)
    got = add_residual_subset(x_TD, branch, keep, 2.0, packing)
    assert_close(got, want, atol=1e-6, name="packed subset")
    assert seen == [3, 9 + 4 + 4]  # the branch only ever saw the kept samples


def test_drop_path_training_forward_backward():
    model = tiny(drop_path=0.5).train()
    assert sample_keep(10, 0.4)[1] == 10 / 6 and len(sample_keep(10, 0.4)[0]) == 6 and sample_keep(1, 0.9)[0] == [0]
    crops = [torch.randn(2, 3, 42, 42), torch.randn(4, 3, 28, 28)]
    outs = model(crops)
    sum(o["cls"].sum() + o["patch"].sum() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters() if p is not model.mask_token)
    model.eval()
    check(model(crops)[1], model(crops[1]), "eval mode ignores drop path")
