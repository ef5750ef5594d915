"""The Web-SSL ViT family (Web-DINO vit_300m ... vit_7b, plus DINOv2-style vit_s / vit_b / vit_l).

Forward paths (all return dicts of final-norm outputs: cls (B, D), patch (B, N, D), registers (B, R, D)):
- forward_features(x_B3HW, masks_BN=None): dense images, optional iBOT masks;
- forward_crops([x_B3HW, ...], masks=None): crop batches of any resolutions packed into one token
  sequence per call (attention per image through cu_seqlens), one output dict per crop batch;
- forward_visible(x_B3HW, keep_idx_BK): MAE encoder, only the K given patches (plus CLS) enter the blocks.
`forward` dispatches to them so FSDP / compile wrappers of the root module see every path.
"""

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from fastvit.models.layers import Block, LayerNorm, Packing
from fastvit.models.pos_embed import PosEmbedResampler


def swiglu_hidden(width):
    """Web-DINO SwiGLU hidden size: int(2/3 * 4d) rounded up to a multiple of 8."""
    return (8 * width // 3 + 7) // 8 * 8


@dataclass(frozen=True)
class ViTConfig:
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    mlp: str = "swiglu"  # "swiglu" (Web-DINO) or "gelu" (timm / Web-MAE / DINOv2 S-B-L)
    patch_size: int = 14
    img_size: int = 224
    n_registers: int = 0
    layerscale_init: float | None = 1e-5  # None: no LayerScale
    drop_path: float = 0.0  # uniform over blocks
    qkv_bias: bool = True
    interpolate_offset: float = 0.1  # DINOv2 / Web-SSL bicubic pos-embed resampling; 0.0 = Hugging Face
    attn_backend: str = "auto"  # fastvit.ops.attention's backend (auto | triton | flash_attn | torch)
    name: str = "custom"

    @property
    def grid(self):
        return self.img_size // self.patch_size

    @property
    def head_dim(self):
        return self.width // self.heads


def _row(width, depth, heads, mlp="swiglu"):
    hidden = swiglu_hidden(width) if mlp == "swiglu" else 4 * width
    return dict(width=width, depth=depth, heads=heads, mlp_hidden=hidden, mlp=mlp)


# The Web-DINO builders (facebookresearch/webssl). vit_s / vit_b / vit_l are the DINOv2 ViT-S/B/L/14 layouts
# (GELU MLP ratio 4), so released DINOv2 S/B/L checkpoints load as they are; every Web-DINO row uses SwiGLU.
VIT_SIZES = {
    "vit_s": _row(384, 12, 6, "gelu"),
    "vit_b": _row(768, 12, 12, "gelu"),
    "vit_l": _row(1024, 24, 16, "gelu"),
    "vit_300m": _row(1024, 24, 16),
    "vit_1b": _row(1536, 40, 24),
    "vit_2b": _row(2688, 24, 21),
    "vit_3b": _row(3072, 26, 24),
    "vit_5b": _row(3584, 32, 28),
    "vit_7b": _row(4096, 32, 32),
}


def vit_config(name, **overrides):
    """The ViTConfig of a size-table row with field overrides; mlp_hidden follows width and mlp unless given."""
    if name not in VIT_SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(VIT_SIZES)}")
    valid = {f.name for f in fields(ViTConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown ViT override(s) {unknown}; valid: {sorted(valid)}")
    merged = {**VIT_SIZES[name], "name": name, **overrides}
    if "mlp_hidden" not in overrides:  # follow the rule for an overridden width or MLP kind
        merged["mlp_hidden"] = swiglu_hidden(merged["width"]) if merged["mlp"] == "swiglu" else 4 * merged["width"]
    return ViTConfig(**merged)


def build_vit(name, *, dtype=None, device=None, **overrides):
    """Builds a size-table ViT. On device "meta" nothing is allocated (call to_empty + init_weights later);
    on any other device the weights are initialised with init_weights()."""
    return VisionTransformer(vit_config(name, **overrides), dtype=dtype, device=device)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig, *, dtype=None, device=None):
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.mlp not in ("swiglu", "gelu"):
            raise ValueError(f"mlp must be 'swiglu' or 'gelu', got {cfg.mlp!r}")
        self.cfg = cfg
        self.resample_pos = PosEmbedResampler(cfg.interpolate_offset)
        with torch.device("meta"):
            self._make_modules(cfg)
        if dtype is not None:
            self.to(dtype)
        device = torch.device(device) if device is not None else torch.device("cpu")
        if device.type != "meta":
            self.to_empty(device=device)
            self.init_weights()

    def _make_modules(self, cfg):
        d, p = cfg.width, cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.n_registers, d)) if cfg.n_registers else None
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, d, kernel_size=p, stride=p)
        kw = dict(
            mlp=cfg.mlp,
            qkv_bias=cfg.qkv_bias,
            layerscale_init=cfg.layerscale_init,
            drop_path=cfg.drop_path,
            attn_backend=cfg.attn_backend,
        )
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_hidden, **kw) for _ in range(cfg.depth))
        self.norm = LayerNorm(d)

    @torch.no_grad()
    def init_weights(self):
        """Initialises every parameter in place (after to_empty), as DINOv2 and timm do: linears and pos_embed
        trunc_normal_(std=0.02) with torch's absolute bounds +-2 (so in effect normal(0.02); cutting at +-2 std
        instead shrinks the std to 0.0176), zero biases, patch embedding torch's conv default, cls / registers
        normal(1e-6), mask token zeros, LayerScale its init value, norms ones / zeros."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_parameters"):  # conv, LayerNorm, LayerScale
                m.reset_parameters()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.zeros_(self.mask_token)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)

    # ---- token preparation -------------------------------------------------------------------------

    def _grid_of(self, x_B3HW):
        H, W = x_B3HW.shape[-2:]
        p = self.cfg.patch_size
        if x_B3HW.dim() != 4 or x_B3HW.shape[1] != 3 or H % p or W % p:
            raise ValueError(f"expected images (B, 3, H, W) with H, W multiples of {p}, got {tuple(x_B3HW.shape)}")
        return H // p, W // p

    def pos_embed_for(self, grid_hw):
        """Position embedding (1, 1 + h*w, D) for a patch grid, bicubically resampled from the learned one."""
        g = self.cfg.grid
        patch = self.resample_pos(self.pos_embed[:, 1:], (g, g), tuple(grid_hw))
        return torch.cat([self.pos_embed[:, :1], patch], dim=1)

    def patch_tokens(self, x_B3HW, masks_BN=None):
        """Patch embeddings (B, N, D) with masked ones replaced by the mask token, plus position embedding."""
        grid = self._grid_of(x_B3HW)
        x_BND = self.patch_embed.proj(x_B3HW).flatten(2).transpose(1, 2)
        if masks_BN is not None:
            B, N = x_BND.shape[:2]
            if masks_BN.shape != (B, N) or masks_BN.dtype != torch.bool:
                raise ValueError(
                    f"masks must be bool (B, N) = ({B}, {N}), got {masks_BN.dtype} {tuple(masks_BN.shape)}"
                )
            x_BND = torch.where(masks_BN[..., None], self.mask_token.to(x_BND.dtype)[None], x_BND)
        pos = self.pos_embed_for(grid)
        return x_BND + pos[:, 1:].to(x_BND.dtype), pos[:, :1]

    def with_prefix(self, x_BND, cls_pos_11D):
        """Prepends CLS (+ its position embedding) and the register tokens: (B, 1 + R + N, D)."""
        B = x_BND.shape[0]
        parts = [(self.cls_token + cls_pos_11D).to(x_BND.dtype).expand(B, -1, -1)]
        if self.register_tokens is not None:
            parts.append(self.register_tokens.to(x_BND.dtype).expand(B, -1, -1))
        return torch.cat(parts + [x_BND], dim=1)

    def _split(self, x_BLD):
        """Final-norm tokens (B, L, D) -> dict(cls, registers, patch)."""
        r = self.cfg.n_registers
        return {"cls": x_BLD[:, 0], "registers": x_BLD[:, 1 : 1 + r], "patch": x_BLD[:, 1 + r :]}

    # ---- forward paths -----------------------------------------------------------------------------

    def forward_features(self, x_B3HW, masks_BN=None):
        x_BND, cls_pos = self.patch_tokens(x_B3HW, masks_BN)
        x = self.with_prefix(x_BND, cls_pos)
        for blk in self.blocks:
            x = blk(x)
        return self._split(self.norm(x))

    def forward_crops(self, crops, masks=None):
        """All crop batches [(B_i, 3, H_i, W_i), ...] in one packed sequence; masks: None or a list with
        None or bool (B_i, N_i) per crop batch. Returns one dict per crop batch."""
        if masks is None:
            masks = [None] * len(crops)
        if len(masks) != len(crops):
            raise ValueError(f"got {len(masks)} masks for {len(crops)} crop batches")
        seqs, seqlens = [], []
        for x_B3HW, m in zip(crops, masks):
            x_BLD = self.with_prefix(*self.patch_tokens(x_B3HW, m))
            B, L, D = x_BLD.shape
            seqs.append(x_BLD.reshape(B * L, D))
            seqlens += [L] * B
        x_TD = torch.cat(seqs)
        packing = Packing.from_seqlens(seqlens, x_TD.device)
        for blk in self.blocks:
            x_TD = blk(x_TD, packing)
        x_TD = self.norm(x_TD)
        outs, start = [], 0
        for x_B3HW in crops:
            B, L = x_B3HW.shape[0], 1 + self.cfg.n_registers + math.prod(self._grid_of(x_B3HW))
            outs.append(self._split(x_TD[start : start + B * L].view(B, L, -1)))
            start += B * L
        return outs

    def forward_visible(self, x_B3HW, keep_idx_BK):
        """MAE encoder: patch tokens at keep_idx (B, K) (with their position embedding) plus CLS."""
        x_BND, cls_pos = self.patch_tokens(x_B3HW)
        B, N, D = x_BND.shape
        if keep_idx_BK.dim() != 2 or keep_idx_BK.shape[0] != B:
            raise ValueError(f"keep_idx must be (B={B}, K), got {tuple(keep_idx_BK.shape)}")
        x_BKD = torch.gather(x_BND, 1, keep_idx_BK.long()[..., None].expand(-1, -1, D))
        x = self.with_prefix(x_BKD, cls_pos)
        for blk in self.blocks:
            x = blk(x)
        return self._split(self.norm(x))

    def forward(self, x, masks=None, *, keep_idx=None):
        """A list of crop batches -> forward_crops; keep_idx -> forward_visible; else forward_features."""
        if isinstance(x, (list, tuple)):
            return self.forward_crops(x, masks)
        if keep_idx is not None:
            return self.forward_visible(x, keep_idx)
        return self.forward_features(x, masks)


def num_params(model):
    return sum(p.numel() for p in model.parameters())


__all__ = ["VIT_SIZES", "ViTConfig", "VisionTransformer", "build_vit", "num_params", "swiglu_hidden", "vit_config"]
