"""WebMAETask: the Web-MAE task for the generic loop: a masked autoencoder (ViT encoder on the visible patches +
decoder), one random-resized crop per image, random masking per step, the fused normalised-pixel loss. No teacher."""

import hashlib

import torch

from fastvit.data import mae_random_masking
from fastvit.models.build import build_backbone
from fastvit.models.flops import head_flops, vit_forward_flops
from fastvit.models.vit import vit_config
from fastvit.tasks.single_crop import single_crop_loader, single_crop_synthetic_batch
from fastvit.tasks.web_mae.model import MaskedAutoencoder
from fastvit.tasks.web_mae.objective import MAEObjective
from fastvit.train.task import StudentOnlyTask


def build_mae(cfg, device):
    o, m = cfg.objective.web_mae, cfg.model
    if cfg.data.global_crops_size != m.img_size:
        raise ValueError(
            f"Web-MAE trains at model.img_size: set data.global_crops_size={m.img_size} "
            f"(got {cfg.data.global_crops_size})"
        )
    with torch.device("meta"):
        model = MaskedAutoencoder(
            build_backbone(m),
            decoder_width=o.decoder_width,
            decoder_depth=o.decoder_depth,
            decoder_heads=o.decoder_heads,
        )
    model.to_empty(device=device)
    model.init_weights()
    model.backbone.mask_token.requires_grad_(False)  # unused by the visible-patch encoder (DDP needs every grad)
    return model


def mask_seed(seed, step, rank):
    """A 63-bit seed of the MAE masks of (run seed, step, data rank), distinct for distinct triples."""
    return int.from_bytes(hashlib.blake2b(f"mae-masks/{seed}/{step}/{rank}".encode(), digest_size=8).digest()) >> 1


class WebMAETask(StudentOnlyTask):
    """What the generic loop needs to train Web-MAE."""

    loss_keys = ("mae", "total")

    def __init__(self, cfg, device):
        self.cfg = cfg
        self.student = build_mae(cfg, device)
        self.student_dp = self.student
        o = cfg.objective.web_mae
        self.objective = MAEObjective(cfg.model.patch_size, norm_pix=o.norm_pix, backend=o.loss_backend)
        # The masks' generator, on the training device, re-seeded every step from (seed, step, data rank): a
        # resumed run draws the masks the uninterrupted one drew, on a GPU as on a CPU (the default CUDA
        # generator is in no checkpoint). Tensor-parallel ranks of one data rank draw the same masks.
        self.mask_generator = torch.Generator(device) if device.type != "meta" else None
        self.data_rank = 0

    def build_loader(self, *, batch_size, rank, world_size, device):
        self.data_rank = rank
        return single_crop_loader(
            self.cfg, self.cfg.data.source, batch_size=batch_size, rank=rank, world_size=world_size, device=device
        )

    def synthetic_batch(self, batch_size, device, seed=0):
        return single_crop_synthetic_batch(self.cfg, batch_size, device, seed)

    def schedules(self, step, total):
        """No logged schedule; re-seeds the masks' generator for this step (its micro-batches draw in turn)."""
        self.mask_generator.manual_seed(mask_seed(self.cfg.train.seed, step, self.data_rank))
        return {}

    def losses(self, batch, sched):
        x_B3HW = batch["global_crops"]
        n_patches = self.backbone_cfg.grid**2
        ratio = self.cfg.objective.web_mae.mask_ratio
        m = mae_random_masking(x_B3HW.shape[0], n_patches, ratio, generator=self.mask_generator)
        pred_BNP = self.student_dp(x_B3HW, m["keep_idx"], m["restore_idx"])
        return self.objective(pred_BNP=pred_BNP, images_B3HW=x_B3HW, mask_BN=m["mask"])

    def flops_per_step(self, batch_per_rank):
        """3x the forward FLOPs of encoder (visible patches) + decoder (all patches + CLS)."""
        c, o, b = self.backbone_cfg, self.cfg.objective.web_mae, batch_per_rank
        n_keep = int(c.grid**2 * (1 - o.mask_ratio))
        encoder = vit_forward_flops(c, [(b, c.img_size, n_keep)])["total"]
        # the decoder as a ViT of its own size: its patch-embedding term equals the pixel prediction head's
        dec = vit_config(
            "vit_s",
            width=o.decoder_width,
            depth=o.decoder_depth,
            heads=o.decoder_heads,
            mlp="gelu",
            patch_size=c.patch_size,
            img_size=c.img_size,
        )
        decoder = vit_forward_flops(dec, [(b, c.img_size)])["total"]
        embed = head_flops(b * (1 + n_keep), [c.width, o.decoder_width])
        return 3 * (encoder + decoder + embed)
