"""CLIPTask: the CLIP baseline task for the generic loop: ViT image tower + causal text tower, one random-resized crop
per image, captions tokenised in the main process, InfoNCE or SigLIP over the global batch. No teacher."""

from fastvit.data.captions import captioned_source
from fastvit.models.flops import head_flops, vit_forward_flops
from fastvit.tasks.clip.model import build_clip
from fastvit.tasks.clip.objective import CLIPObjective
from fastvit.tasks.single_crop import single_crop_loader, single_crop_synthetic_batch
from fastvit.train.task import StudentOnlyTask


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
        o = cfg.objective.clip
        self.objective = CLIPObjective(o.loss, backend=o.loss_backend)
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
        """(ids (B, L), end-of-text index (B,)): the batch's own, or its samples' captions tokenised here (those the
        batch carries, from shards, or its source's by read_indices)."""
        if "text_ids" in batch:
            return batch["text_ids"], batch["text_eot"]
        if "captions" in batch:
            texts = batch["captions"]
        elif self.source is None:
            raise ValueError("CLIPTask: a batch without text_ids reads its captions from build_loader()'s source")
        else:
            texts = [self.source.caption(i) for i in batch["read_indices"].tolist()]
        return tuple(t.to(device) for t in self.tokenizer.encode_batch(texts))

    def losses(self, batch, sched):
        x_B3HW = batch["global_crops"]
        ids_BL, eot_B = self._tokens(batch, x_B3HW.device)
        out = self.student_dp(x_B3HW, ids_BL, eot_B)
        return self.objective(img_bD=out["img"], txt_bD=out["txt"], logit_scale=out["scale"], logit_bias=out["bias"])

    def flops_per_step(self, batch_per_rank):
        c, b = self.backbone_cfg, batch_per_rank
        vision = vit_forward_flops(c, [(b, self.cfg.data.global_crops_size)])["total"]
        vision += head_flops(b, [c.width, self.cfg.objective.clip.embed_dim])
        return 3 * (vision + text_forward_flops(self.student.text, b))
