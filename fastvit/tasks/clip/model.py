"""The CLIP baseline's model: ViT image tower (CLS pooled) + visual projection, causal text tower, learned logit
scale (+ SigLIP bias)."""

import torch
import torch.nn.functional as F
from torch import nn

from fastvit.data.tokenizer import build_tokenizer
from fastvit.models.build import build_backbone
from fastvit.models.text import TextTransformer
from fastvit.tasks.clip.objective import LogitScale


class CLIPModel(nn.Module):
    """backbone (ViT, CLS pooled) + visual projection, text tower, learned logit scale (+ SigLIP bias)."""

    def __init__(self, backbone, text, *, embed_dim, kind="infonce", init_temperature=0.07):
        super().__init__()
        self.backbone = backbone
        self.visual_proj = nn.Linear(backbone.cfg.width, embed_dim, bias=False)
        self.text = text
        self.logit = LogitScale(kind, init_temperature)

    def init_weights(self):
        self.backbone.init_weights()
        nn.init.normal_(self.visual_proj.weight, std=self.backbone.cfg.width**-0.5)
        self.text.init_weights()
        self.logit.reset_parameters()

    def encode_image(self, x_B3HW):
        return F.normalize(self.visual_proj(self.backbone(x_B3HW)["cls"]), dim=-1)

    def encode_text(self, ids_BL, eot_idx_B):
        return F.normalize(self.text(ids_BL, eot_idx_B), dim=-1)

    def forward(self, x_B3HW, ids_BL, eot_idx_B):
        """L2-normalised image and text embeddings (B, E), the logit scale and the SigLIP bias (or None)."""
        img, txt = self.encode_image(x_B3HW), self.encode_text(ids_BL, eot_idx_B)
        return {"img": img, "txt": txt, "scale": self.logit(), "bias": self.logit.bias}


def build_clip(cfg, device):
    """(CLIPModel on `device`, initialised, the backbone's unused mask token frozen; its tokenizer)."""
    o = cfg.objective.clip
    tok = build_tokenizer(o.tokenizer, o.context_length)
    with torch.device("meta"):
        text = TextTransformer(
            vocab_size=tok.vocab_size,
            context_length=o.context_length,
            width=o.text_width,
            depth=o.text_depth,
            heads=o.text_heads,
            embed_dim=o.embed_dim,
        )
        model = CLIPModel(
            build_backbone(cfg.model),
            text,
            embed_dim=o.embed_dim,
            kind=o.loss,
            init_temperature=o.init_temperature,
        )
    model.to_empty(device=device)
    model.init_weights()
    model.backbone.mask_token.requires_grad_(False)
    return model, tok
