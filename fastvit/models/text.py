"""The CLIP text tower: token + learned position embeddings, causal pre-norm blocks, EOT pooling, projection.

Causal attention means the end-of-text token (the last real token) has seen the whole caption and no
padding, so its final-norm output is the caption's feature; a bias-free linear projects it to the shared
embedding space.
"""

import torch
import torch.nn.functional as F
from torch import nn

from fastvit.models.layers import GeluMlp, LayerNorm


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"text width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BLD):
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        o_BHLd = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(o_BHLd.transpose(1, 2).reshape(B, L, D))


class TextBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn = CausalSelfAttention(dim, heads)
        self.norm2 = LayerNorm(dim, eps=1e-5)
        self.mlp = GeluMlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TextTransformer(nn.Module):
    """ids (B, L) int64 + eot_idx (B,) -> text embeddings (B, embed_dim) (not normalised)."""

    def __init__(self, *, vocab_size, context_length=77, width=512, depth=12, heads=8, embed_dim=512):
        super().__init__()
        self.context_length, self.width = context_length, width
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        self.layers = nn.ModuleList(TextBlock(width, heads) for _ in range(depth))
        self.norm = LayerNorm(width, eps=1e-5)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    @torch.no_grad()
    def init_weights(self):
        """CLIP's scheme: embeddings normal(0.02) / (0.01), attention and MLP weights normal with
        width- and depth-scaled stds, zero biases, norms ones / zeros, projection normal(width^-0.5)."""
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        d, n = self.width, len(self.layers)
        proj_std, attn_std, fc_std = d**-0.5 * (2 * max(n, 1)) ** -0.5, d**-0.5, (2 * d) ** -0.5
        for blk in self.layers:
            for lin, std in (
                (blk.attn.qkv, attn_std),
                (blk.attn.proj, proj_std),
                (blk.mlp.fc1, fc_std),
                (blk.mlp.fc2, proj_std),
            ):
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)
            blk.norm1.reset_parameters()
            blk.norm2.reset_parameters()
        self.norm.reset_parameters()
        nn.init.normal_(self.proj.weight, std=d**-0.5)

    def forward(self, ids_BL, eot_idx_B):
        B, L = ids_BL.shape
        if L > self.context_length:
            raise ValueError(f"text of {L} tokens exceeds the context length {self.context_length}")
        x = self.token_embed(ids_BL) + self.pos_embed[:, :L]
        for blk in self.layers:
            x = blk(x)
        x = self.norm(x)
        return self.proj(x[torch.arange(B, device=x.device), eot_idx_B])
