"""The Web-DINO module: backbone + DINO head on CLS tokens, iBOT head on masked patch tokens; student and teacher.

Student and teacher are two WebDINO modules; the teacher is a copy of the student updated by EMA. Calls go
through `forward` so DDP / FSDP2 hooks see them. The pipelined task's last stage runs the same `head_outputs`.
"""

import torch
from torch import nn

from fastvit.models.build import backbone_config, build_backbone
from fastvit.models.heads import DINOHead
from fastvit.parallel.meta_init import build_on_meta


def masked_patch_index(masks, mask_indices=None):
    """(rows, cols) of the masked patches of masks (n, N) bool, in masks[masks] order, from mask_indices (M,)
    int64 flat indices into masks.view(-1) (the loader's host-known ones: static shapes, no sync); without them
    they are found on the device (nonzero: a host sync)."""
    if mask_indices is None:
        mask_indices = masks.reshape(-1).nonzero().squeeze(1)
    N = masks.shape[1]
    return mask_indices // N, mask_indices % N


def head_outputs(dino_head, ibot_head, cls_g, patch_g=None, masks=None, cls_l=None, mask_indices=None):
    """The heads' part of WebDINO.forward: cls_g (n_g*B, D) normalised CLS of the global crops, patch_g
    (n_g*B, N, D) their patch tokens, masks (n_g*B, N) bool or None (with mask_indices, see
    masked_patch_index), cls_l (n_l*B, D) or None."""
    out = {"cls_g": cls_g, "dino_g": dino_head.features(cls_g), "dino_protos": dino_head.prototypes()}
    if cls_l is not None:
        out["dino_l"] = dino_head.features(cls_l)
    if masks is not None:
        rows, cols = masked_patch_index(masks, mask_indices)
        out["ibot"] = ibot_head.features(patch_g[rows, cols])
        out["ibot_protos"] = ibot_head.prototypes()
    return out


def make_heads(width, o):
    """(DINO head, iBOT head) for a backbone of `width` and the objective.web_dino section `o`."""
    dino = DINOHead(width, o.dino_out_dim, o.head_hidden_dim, o.dino_bottleneck_dim)
    ibot = DINOHead(width, o.ibot_out_dim, o.head_hidden_dim, o.ibot_bottleneck_dim)
    return dino, ibot


def build_heads(cfg):
    """{"dino_head", "ibot_head"} on the meta device (ObjectiveSpec.heads: what export and model.init read)."""
    with torch.device("meta"):
        dino, ibot = make_heads(backbone_config(cfg.model).width, cfg.objective.web_dino)
    return {"dino_head": dino, "ibot_head": ibot}


class WebDINO(nn.Module):
    """backbone -> DINO head on CLS tokens, iBOT head on masked patch tokens."""

    def __init__(self, backbone, cfg_obj):
        super().__init__()
        self.backbone = backbone
        self.dino_head, self.ibot_head = make_heads(backbone.cfg.width, cfg_obj)

    def init_weights(self):
        self.backbone.init_weights()
        self.dino_head.init_weights()
        self.ibot_head.init_weights()

    def forward(self, global_crops, local_crops=None, masks=None, *, teacher=False, mask_indices=None):
        """global_crops (n_g*B, 3, S, S) crop-major, local_crops (n_l*B, 3, s, s) or None, masks (n_g*B, N) bool,
        mask_indices (M,) their flat indices (from the loader; see masked_patch_index).

        The student masks its global crops' patch tokens (iBOT); the teacher sees them unmasked and
        only reads its patch outputs at the masked positions. Returns plain tensors (DDP-friendly):
        cls_g (n_g*B, D), dino_g / dino_l / ibot bottleneck features (L2-normalised), and the two
        normalised prototype matrices.
        """
        crops = [global_crops] + ([local_crops] if local_crops is not None and not teacher else [])
        in_masks = [None if teacher else masks] + [None] * (len(crops) - 1)
        outs = self.backbone(crops, in_masks)
        cls_l = outs[1]["cls"] if len(outs) > 1 else None
        g = outs[0]
        return head_outputs(self.dino_head, self.ibot_head, g["cls"], g["patch"], masks, cls_l, mask_indices)


def build_student_teacher(cfg, device):
    """Student and teacher WebDINO modules on `device`, initialised identically; the teacher has no grads and
    stays in eval mode (no drop path: it sees every block for every image, as in DINOv2)."""
    return build_on_meta(
        lambda: WebDINO(build_backbone(cfg.model), cfg.objective.web_dino), device, WebDINO.init_weights
    )
