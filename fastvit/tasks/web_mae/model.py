"""The MAE decoder and the masked autoencoder around a ViT encoder (He et al. 2022, Web-MAE).

The encoder (a VisionTransformer) sees CLS + the visible patches only (forward_visible). The decoder
embeds them to its own width, appends one shared mask token per removed patch, unshuffles to the
original patch order, adds its own fixed 2-D sin-cos position embedding, runs plain pre-norm blocks
(GELU MLP ratio 4, no LayerScale) and predicts the p*p*3 pixels of every patch.
"""

import torch
from torch import nn

from fastvit.models.layers import Block, LayerNorm


def sincos_pos_embed_2d(grid, dim):
    """(1 + grid*grid, dim) fixed position embedding: a zero row for CLS, then sin/cos of the row and the
    column index (dim/4 frequencies each, 1 / 10000^(i / (dim/4)))."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij"
    )
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega[None]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.cat(parts, dim=1)]).float()


class MAEDecoder(nn.Module):
    """latent (B, 1 + K, D_enc) (CLS + visible, in keep order) + restore_idx (B, N) -> pixels (B, N, 3*p*p)."""

    def __init__(self, enc_width, grid, patch_size, *, width=512, depth=8, heads=16):
        super().__init__()
        self.grid, self.width = grid, width
        self.embed = nn.Linear(enc_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", torch.zeros(1, 1 + grid * grid, width), persistent=False)
        self.layers = nn.ModuleList(
            Block(width, heads, 4 * width, mlp="gelu", layerscale_init=None) for _ in range(depth)
        )
        self.norm = LayerNorm(width)
        self.pred = nn.Linear(width, patch_size * patch_size * 3)

    @torch.no_grad()
    def init_weights(self):
        """xavier-uniform linears with zero biases, mask token normal(0.02), norms ones / zeros, sin-cos positions."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LayerNorm):
                m.reset_parameters()
        nn.init.normal_(self.mask_token, std=0.02)
        self.pos_embed.copy_(sincos_pos_embed_2d(self.grid, self.width)[None])

    def forward(self, latent_BLD, restore_idx_BN):
        x = self.embed(latent_BLD)
        B, N, D = x.shape[0], restore_idx_BN.shape[1], x.shape[-1]
        vis_BKD = x[:, 1:]
        fill = self.mask_token.to(x.dtype).expand(B, N - vis_BKD.shape[1], D)
        x_BND = torch.gather(torch.cat([vis_BKD, fill], 1), 1, restore_idx_BN[..., None].expand(-1, -1, D))
        x = torch.cat([x[:, :1], x_BND], 1) + self.pos_embed.to(x.dtype)
        for blk in self.layers:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]


class MaskedAutoencoder(nn.Module):
    """backbone (VisionTransformer, encoder on visible patches) + MAEDecoder; forward -> pixels (B, N, 3*p*p)."""

    def __init__(self, backbone, *, decoder_width=512, decoder_depth=8, decoder_heads=16):
        super().__init__()
        c = backbone.cfg
        if c.n_registers:
            raise ValueError(f"MAE encoders take no register tokens, got model.n_registers={c.n_registers}")
        self.backbone = backbone
        self.decoder = MAEDecoder(
            c.width, c.grid, c.patch_size, width=decoder_width, depth=decoder_depth, heads=decoder_heads
        )

    def init_weights(self):
        self.backbone.init_weights()
        self.decoder.init_weights()

    def forward(self, images_B3HW, keep_idx_BK, restore_idx_BN):
        out = self.backbone(images_B3HW, keep_idx=keep_idx_BK)
        latent = torch.cat([out["cls"][:, None], out["patch"]], 1)
        return self.decoder(latent, restore_idx_BN)
