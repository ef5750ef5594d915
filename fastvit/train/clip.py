"""The CLIP baseline task for the generic loop: ViT image tower + causal text tower, one random-resized crop
per image, captions tokenised in the main process, InfoNCE or SigLIP over the global batch. No teacher."""

import torch
import torch.nn.functional as F
from torch import nn

from fastvit.data.captions import captioned_source
from fastvit.data.tokenizer import build_tokenizer
from fastvit.models.build import build_backbone
from fastvit.models.flops import head_flops, vit_forward_flops
from fastvit.models.text import TextTransformer
from fastvit.objectives.clip import CLIPObjective, LogitScale
from fastvit.train.task import StudentOnlyTask
from fastvit.train.web_mae import single_crop_loader, single_crop_synthetic_batch


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
    o = cfg.objective
    tok = build_tokenizer(o.clip_tokenizer, o.clip_context_length)
    with torch.device("meta"):
        text = TextTransformer(
            vocab_size=tok.vocab_size,
            context_length=o.clip_context_length,
            width=o.clip_text_width,
            depth=o.clip_text_depth,
            heads=o.clip_text_heads,
            embed_dim=o.clip_embed_dim,
        )
        model = CLIPModel(
            build_backbone(cfg.model),
            text,
            embed_dim=o.clip_embed_dim,
            kind=o.clip_loss,
            init_temperature=o.clip_init_temperature,
        )
    model.to_empty(device=device)
    model.init_weights()
    model.backbone.mask_token.requires_grad_(False)
    return model, tok


def text_forward_flops(text_cfg, batch):
    """Matrix-product FLOPs of the text tower on `batch` captions of the full context length."""
    L, w, depth, e = text_cfg.context_length, text_cfg.width, len(text_cfg.layers), text_cfg.proj.out_features
    per_block = 2 * L * w * 3 * w + 4 * L * L * w + 2 * L * w * w + 2 * 2 * L * w * 4 * w
    return batch * depth * per_block + head_flops(batch, [w, e])


class CLIPTask(StudentOnlyTask):
    """What the generic loop needs to train the CLIP baseline."""

    loss_keys = ("contrastive", "total")

    def __init__(self, cfg, device):
        self.cfg, self.device = cfg, device
        self.student, self.tokenizer = build_clip(cfg, device)
        self.student_dp = self.student
        self.objective = CLIPObjective(cfg.objective.clip_loss, backend=cfg.objective.clip_loss_backend)
        self.source = None

    def build_loader(self, *, batch_size, rank, world_size, device):
        d = self.cfg.data
        self.source = captioned_source(d.source, "train", seed=self.cfg.train.seed, captions=d.captions)
        return single_crop_loader(
            self.cfg, self.source, batch_size=batch_size, rank=rank, world_size=world_size, device=device
        )

    def synthetic_batch(self, batch_size, device, seed=0):
        """Random crops and the tokens of made-up captions (batch["text_ids"], batch["text_eot"])."""
        batch = single_crop_synthetic_batch(self.cfg, batch_size, device, seed)
        texts = [f"a photo of thing number {i}" for i in range(batch_size)]
        batch["text_ids"], batch["text_eot"] = (t.to(device) for t in self.tokenizer.encode_batch(texts))
        return batch

    def schedules(self, step, total):
        return {"logit_scale": self.student.logit().detach()}  # read on the host only when a line is logged

    def _tokens(self, batch, device):
        """(ids (B, L), end-of-text index (B,)): the batch's own, or its samples' captions tokenised here."""
        if "text_ids" in batch:
            return batch["text_ids"], batch["text_eot"]
        if self.source is None:
            raise ValueError("CLIPTask: a batch without text_ids reads its captions from build_loader()'s source")
        texts = [self.source.caption(int(i)) for i in batch["labels"].tolist()]  # labels: decoded sample indices
        return tuple(t.to(device) for t in self.tokenizer.encode_batch(texts))

    def losses(self, batch, sched):
        x_B3HW = batch["global_crops"]
        ids_BL, eot_B = self._tokens(batch, x_B3HW.device)
        out = self.student_dp(x_B3HW, ids_BL, eot_B)
        return self.objective(out["img"], out["txt"], out["scale"], out["bias"])

    def flops_per_step(self, batch_per_rank):
        c, b = self.backbone_cfg, batch_per_rank
        vision = vit_forward_flops(c, [(b, self.cfg.data.global_crops_size)])["total"]
        vision += head_flops(b, [c.width, self.cfg.objective.clip_embed_dim])
        return 3 * (vision + text_forward_flops(self.student.text, b))
