"""Exact forward FLOPs of a ViT for a crop set, for MFU.

Convention: a multiply-add counts as 2 FLOPs and only matrix products are counted (the convention of
MFU figures and of torch.utils.flop_counter): patch embedding, qkv, attention scores QK^T, attention
values PV, output projection, MLP, and optional heads. Biases, norms, softmax, activations, LayerScale
and position-embedding adds are not counted (together < 1% for Web-DINO sizes). A training step costs
3x the forward (backward = 2x forward) plus recomputation if activation checkpointing is on.

Per image of N embedded patches whose L = 1 + R + K tokens enter the blocks (K = N unless MAE keeps
fewer), width d, MLP hidden h, patch p:
    patch_embed = 2 N (3 p^2) d
    per block:  qkv = 2 L d 3d,  attn_scores = 2 L^2 d,  attn_values = 2 L^2 d,  proj = 2 L d d,
                mlp = 2 L d (2h) + 2 L h d (SwiGLU)  or  2 L d h + 2 L h d (GELU)
Attention is per image (packed sequences do not attend to each other): sum over heads of 2 L^2 Dh = 2 L^2 d.
"""

from collections.abc import Sequence

_KEYS = ("patch_embed", "qkv", "attn_scores", "attn_values", "proj", "mlp", "heads")


def _crop_tokens(cfg, crop):
    """(batch, N embedded patches, K patches entering the blocks) of one crop-set entry."""
    if isinstance(crop, int):
        return 1, crop, crop
    if not isinstance(crop, Sequence) or len(crop) not in (2, 3):
        raise ValueError(
            f"a crop is (batch, resolution), (batch, resolution, n_visible) or a token count; got {crop!r}"
        )
    batch, res = crop[0], crop[1]
    h, w = (res, res) if isinstance(res, int) else res
    if h % cfg.patch_size or w % cfg.patch_size:
        raise ValueError(f"resolution {h}x{w} is not a multiple of patch size {cfg.patch_size}")
    n = (h // cfg.patch_size) * (w // cfg.patch_size)
    k = crop[2] if len(crop) == 3 else n
    return batch, n, k


def head_flops(n_rows, dims):
    """FLOPs of an MLP head applied to n_rows vectors: linears dims[0] -> dims[1] -> ... -> dims[-1]."""
    return sum(2 * n_rows * a * b for a, b in zip(dims[:-1], dims[1:]))


def vit_forward_flops(cfg, crops, heads=()):
    """Forward FLOPs by component and "total" for a ViTConfig (or a model with .cfg).

    crops: entries (batch, resolution), (batch, resolution, n_visible) with resolution an int or (h, w),
    or an int = one image of that many patch tokens. heads: (n_rows, dims) pairs, see head_flops.
    """
    cfg = getattr(cfg, "cfg", cfg)
    d, h, p = cfg.width, cfg.mlp_hidden, cfg.patch_size
    mlp_matrices = 3 if cfg.mlp == "swiglu" else 2  # d x 2h + h x d, or d x h + h x d
    out = dict.fromkeys(_KEYS, 0)
    for crop in crops:
        batch, n, k = _crop_tokens(cfg, crop)
        L = 1 + cfg.n_registers + k
        out["patch_embed"] += batch * 2 * n * 3 * p * p * d
        out["qkv"] += batch * cfg.depth * 2 * L * d * 3 * d
        out["attn_scores"] += batch * cfg.depth * 2 * L * L * d
        out["attn_values"] += batch * cfg.depth * 2 * L * L * d
        out["proj"] += batch * cfg.depth * 2 * L * d * d
        out["mlp"] += batch * cfg.depth * 2 * L * d * h * mlp_matrices
    out["heads"] = sum(head_flops(n_rows, dims) for n_rows, dims in heads)
    out["total"] = sum(out[key] for key in _KEYS)
    return out
