"""Forward FLOPs: a hand count on a small config, and torch's own FlopCounterMode on real forwards
(matmuls and convolutions; the attention core is covered by the hand count)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fastvit.models import build_vit, head_flops, vit_config, vit_forward_flops


def test_hand_count_small_config():
    # width 8, depth 1, 2 heads, GELU hidden 32, patch 2, 4x4 image: N = 4 patches, L = 5 tokens
    cfg = vit_config("vit_s", width=8, depth=1, heads=2, mlp="gelu", mlp_hidden=32, patch_size=2, img_size=4)
    got = vit_forward_flops(cfg, [(1, 4)], heads=[(1, [8, 16, 4])])
    hand = {
        "patch_embed": 2 * 4 * 12 * 8,  # 4 patches x (3*2*2 -> 8) = 768
        "qkv": 2 * 5 * 8 * 24,  # 1920
        "attn_scores": 2 * 5 * 5 * 4 * 2,  # 2 heads x (5x4 @ 4x5) = 400
        "attn_values": 2 * 5 * 5 * 4 * 2,  # 2 heads x (5x5 @ 5x4) = 400
        "proj": 2 * 5 * 8 * 8,  # 640
        "mlp": 2 * 5 * 8 * 32 + 2 * 5 * 32 * 8,  # 5120
        "heads": 2 * 8 * 16 + 2 * 16 * 4,  # 384
    }
    assert got == {**hand, "total": 9632}
    # batch, depth and (h, w) scale as they should; SwiGLU has three d x h matrices
    two = vit_forward_flops(cfg, [(3, (4, 4)), 4])
    assert two["qkv"] == 4 * hand["qkv"] and two["patch_embed"] == 4 * hand["patch_embed"]
    swiglu = vit_forward_flops(
        vit_config("vit_s", width=8, depth=2, heads=2, mlp="swiglu", mlp_hidden=32, patch_size=2), [(1, 4)]
    )
    assert swiglu["mlp"] == 2 * (2 * 5 * 8 * 64 + 2 * 5 * 32 * 8)
    assert head_flops(10, [8, 16]) == 2 * 10 * 8 * 16
    with pytest.raises(ValueError, match="multiple"):
        vit_forward_flops(cfg, [(1, 5)])


def counted(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def no_attn(cfg, crops):
    """Our count without QK^T and PV: torch's counter does not see SDPA's CPU kernel (checked by hand above)."""
    f = vit_forward_flops(cfg, crops)
    return f["total"] - f["attn_scores"] - f["attn_values"]


@torch.no_grad()
def test_matches_flop_counter_on_real_forwards():
    model = build_vit("vit_s", width=64, depth=2, heads=4, mlp="swiglu", img_size=42, n_registers=1).eval()
    g = [torch.randn(2, 3, 42, 42) for _ in range(2)]
    loc = [torch.randn(3, 3, 28, 28) for _ in range(2)]
    assert counted(lambda: model(g[0])) == no_attn(model, [(2, 42)])
    resample = counted(lambda: model.pos_embed_for((2, 2)))  # per-resolution pos-embed matmuls, not per image
    packed = counted(lambda: model(g + loc)) - 2 * resample
    assert packed == no_attn(model, [(2, 42), (2, 42), (3, 28), (3, 28)])
    keep = torch.stack([torch.randperm(9)[:4] for _ in range(2)])
    assert counted(lambda: model(g[0], keep_idx=keep)) == no_attn(model, [(2, 42, 4)])
    gelu = build_vit("vit_s", width=32, depth=1, heads=2, mlp="gelu", img_size=28).eval()
    assert counted(lambda: gelu(torch.randn(1, 3, 28, 28))) == no_attn(gelu.cfg, [(1, 28)])
