"""CLIP objectives: InfoNCE with a learnable temperature and the SigLIP sigmoid loss, over the global batch.

Each rank holds b image and b text embeddings (L2-normalised). The columns of the other modality are
all-gathered with gradients (torch.distributed.nn.functional.all_gather sums every rank's gradient back to
the owner), and each rank computes only its own b rows against the B = world * b columns; its positives sit
at columns rank * b + i. The mean over ranks of the per-rank losses is the loss of one process on the full
batch, and with DDP's gradient averaging so are the gradients (tests/tasks/clip/test_clip_multirank.py).
"""

import math

import torch
import torch.distributed as dist
from torch import nn

from fastvit.ops import clip_loss


def gather_with_grad(x_bD, group=None):
    """(all ranks' rows concatenated (B, D), this rank's row offset); differentiable, identity on one process."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return x_bD, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x_bD.contiguous(), group=group)
    return torch.cat(parts), dist.get_rank(group) * x_bD.shape[0]


def infonce_loss(img_bD, txt_bD, logit_scale, *, group=None, backend="auto"):
    """Symmetric InfoNCE: (image rows vs all texts + text rows vs all images) / 2, logits = scale * cosine."""
    txt_BD, offset = gather_with_grad(txt_bD, group)
    img_BD, _ = gather_with_grad(img_bD, group)
    i2t = clip_loss(img_bD, txt_BD, logit_scale, offset=offset, kind="infonce", backend=backend)
    t2i = clip_loss(txt_bD, img_BD, logit_scale, offset=offset, kind="infonce", backend=backend)
    return (i2t + t2i) / 2


def siglip_loss(img_bD, txt_bD, logit_scale, logit_bias, *, group=None, backend="auto"):
    """SigLIP: per image row, the sum over all texts of -log sigmoid(z * (scale * cosine + bias)), z = +-1."""
    txt_BD, offset = gather_with_grad(txt_bD, group)
    return clip_loss(img_bD, txt_BD, logit_scale, offset=offset, kind="siglip", logit_bias=logit_bias, backend=backend)


class _ClampReturning(torch.autograd.Function):
    """x clamped to [lo, hi]; the gradient passes inside the range and, outside it, only when a descent step
    moves x back towards it. A plain clamp's zero gradient would leave a log scale that an optimizer's momentum
    carried past the cap there for good; open_clip clamps the parameter itself to [0, ln 100] after each step."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.bounds = (lo, hi)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        inside = (x >= lo) & (x <= hi)
        returning = ((x > hi) & (g > 0)) | ((x < lo) & (g < 0))  # descent x -= lr * g heads back into range
        return g * (inside | returning).to(g.dtype), None, None


class LogitScale(nn.Module):
    """Learned log logit scale (and SigLIP bias): InfoNCE starts at 1 / init_temperature, kept in [1, max_scale];
    SigLIP starts at scale 10, bias -10 (the SigLIP paper's initialisation)."""

    def __init__(self, kind="infonce", init_temperature=0.07, max_scale=100.0):
        super().__init__()
        if kind not in ("infonce", "siglip"):
            raise ValueError(f"objective.clip.loss must be 'infonce' or 'siglip', got {kind!r}")
        if not init_temperature > 0:
            raise ValueError(f"objective.clip.init_temperature must be > 0, got {init_temperature}")
        self.kind, self.max_scale = kind, max_scale
        self.init_log = math.log(10.0) if kind == "siglip" else math.log(1.0 / init_temperature)
        self.log_scale = nn.Parameter(torch.full((1,), self.init_log))  # (1,): FSDP2 shards dim 0
        self.bias = nn.Parameter(torch.full((1,), -10.0)) if kind == "siglip" else None

    @torch.no_grad()
    def reset_parameters(self):
        self.log_scale.fill_(self.init_log)
        if self.bias is not None:
            self.bias.fill_(-10.0)

    def forward(self):
        return _ClampReturning.apply(self.log_scale, 0.0, math.log(self.max_scale)).exp()


class CLIPObjective(nn.Module):
    """(image, text) embeddings (b, D) each, L2-normalised, + scale (+ bias) -> {"contrastive", "total"}."""

    def __init__(self, kind="infonce", *, group=None, backend="auto"):
        super().__init__()
        self.kind, self.group, self.backend = kind, group, backend

    def forward(self, *, img_bD, txt_bD, logit_scale, logit_bias=None):
        if img_bD.shape != txt_bD.shape:
            raise ValueError(
                f"image and text embeddings must have equal shapes, got {tuple(img_bD.shape)} and {tuple(txt_bD.shape)}"
            )
        if self.kind == "siglip":
            loss = siglip_loss(img_bD, txt_bD, logit_scale, logit_bias, group=self.group, backend=self.backend)
        else:
            loss = infonce_loss(img_bD, txt_bD, logit_scale, group=self.group, backend=self.backend)
        return {"contrastive": loss, "total": loss}
