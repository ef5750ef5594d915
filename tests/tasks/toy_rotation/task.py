"""RotationTask: every image in each of `rotations` quarter turns, a linear head on the CLS token names the turn."""

import torch
import torch.nn.functional as F
from torch import nn

from fastvit.models.build import build_backbone
from fastvit.models.flops import head_flops, vit_forward_flops
from fastvit.tasks.single_crop import single_crop_loader, single_crop_synthetic_batch
from fastvit.train.task import StudentOnlyTask


class RotationModel(nn.Module):
    def __init__(self, backbone, rotations):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.cfg.width, rotations)

    def init_weights(self):
        self.backbone.init_weights()
        self.head.reset_parameters()

    def forward(self, x_B3HW):
        return self.head(self.backbone(x_B3HW)["cls"])


class RotationTask(StudentOnlyTask):
    loss_keys = ("rotation", "total")

    def __init__(self, cfg, device):
        self.cfg, o = cfg, cfg.objective.rotation
        with torch.device("meta"):
            self.student = RotationModel(build_backbone(cfg.model), o.rotations)
        self.student.to_empty(device=device)
        self.student.init_weights()
        self.student.backbone.mask_token.requires_grad_(False)  # unused (DDP needs every grad)
        self.student_dp = self.student

    def build_loader(self, *, batch_size, rank, world_size, device):
        return single_crop_loader(
            self.cfg, self.cfg.data.source, batch_size=batch_size, rank=rank, world_size=world_size, device=device
        )

    def synthetic_batch(self, batch_size, device, seed=0):
        return single_crop_synthetic_batch(self.cfg, batch_size, device, seed)

    def losses(self, batch, sched):
        x, o = batch["global_crops"], self.cfg.objective.rotation
        turned = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(o.rotations)])
        target = torch.arange(o.rotations, device=x.device).repeat_interleave(x.shape[0])
        loss = F.cross_entropy(self.student_dp(turned), target, label_smoothing=o.label_smoothing)
        return {"rotation": loss, "total": loss}

    def flops_per_step(self, batch_per_rank):
        c, k = self.backbone_cfg, self.cfg.objective.rotation.rotations
        n = batch_per_rank * k
        return 3 * (vit_forward_flops(c, [(n, self.cfg.data.global_crops_size)])["total"] + head_flops(n, [c.width, k]))
