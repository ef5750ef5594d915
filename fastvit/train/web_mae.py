"""The Web-MAE task for the generic loop: a masked autoencoder (ViT encoder on the visible patches + decoder),
one random-resized crop per image, random masking per step, the fused normalised-pixel loss. No teacher."""

import torch

from fastvit.data import MultiCropConfig, build_loader, mae_random_masking
from fastvit.models.build import build_backbone
from fastvit.models.flops import head_flops, vit_forward_flops
from fastvit.models.mae_decoder import MaskedAutoencoder
from fastvit.models.vit import vit_config
from fastvit.objectives.mae import MAEObjective
from fastvit.train.task import StudentOnlyTask


def single_crop_config(cfg):
    """One random-resized crop + flip per image (no colour, blur or solarisation): MAE's and CLIP's augmentation."""
    d = cfg.data
    return MultiCropConfig(
        global_size=d.global_crops_size,
        n_global=1,
        n_local=0,
        global_scale=d.global_crops_scale,
        jitter_p=0.0,
        gray_p=0.0,
        blur_p_global=(0.0,),
        solarize_p_global=(0.0,),
    )


def single_crop_loader(cfg, source, *, batch_size, rank, world_size, device):
    d = cfg.data
    return build_loader(
        source,
        batch_size=batch_size,
        crops=single_crop_config(cfg),
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        loader=d.loader,
        num_workers=d.num_workers,
        max_pixels=d.max_pixels,
        device_id=device.index if device.type == "cuda" else None,
        data=cfg.data,
    )


def single_crop_synthetic_batch(cfg, batch, device, seed=0):
    """Random normalised crops (B, 3, S, S) of the recipe's size and sample indices (labels)."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.data.global_crops_size
    x = torch.randn(batch, 3, size, size, generator=g)
    return {"global_crops": x.to(device), "labels": torch.arange(batch)}


def build_mae(cfg, device):
    o, m = cfg.objective, cfg.model
    if cfg.data.global_crops_size != m.img_size:
        raise ValueError(
            f"Web-MAE trains at model.img_size: set data.global_crops_size={m.img_size} "
            f"(got {cfg.data.global_crops_size})"
        )
    with torch.device("meta"):
        model = MaskedAutoencoder(
            build_backbone(m),
            decoder_width=o.mae_decoder_width,
            decoder_depth=o.mae_decoder_depth,
            decoder_heads=o.mae_decoder_heads,
        )
    model.to_empty(device=device)
    model.init_weights()
    model.backbone.mask_token.requires_grad_(False)  # unused by the visible-patch encoder (DDP needs every grad)
    return model


class WebMAETask(StudentOnlyTask):
    """What the generic loop needs to train Web-MAE."""

    loss_keys = ("mae", "total")

    def __init__(self, cfg, device):
        self.cfg = cfg
        self.student = build_mae(cfg, device)
        self.student_dp = self.student
        o = cfg.objective
        self.objective = MAEObjective(cfg.model.patch_size, norm_pix=o.mae_norm_pix, backend=o.mae_loss_backend)

    def build_loader(self, *, batch_size, rank, world_size, device):
        return single_crop_loader(
            self.cfg, self.cfg.data.source, batch_size=batch_size, rank=rank, world_size=world_size, device=device
        )

    def synthetic_batch(self, batch_size, device, seed=0):
        return single_crop_synthetic_batch(self.cfg, batch_size, device, seed)

    def losses(self, batch, sched):
        x_B3HW = batch["global_crops"]
        n_patches = self.backbone_cfg.grid**2
        m = mae_random_masking(x_B3HW.shape[0], n_patches, self.cfg.objective.mae_mask_ratio, device=x_B3HW.device)
        pred_BNP = self.student_dp(x_B3HW, m["keep_idx"], m["restore_idx"])
        return self.objective(pred_BNP, x_B3HW, m["mask"])

    def flops_per_step(self, batch_per_rank):
        """3x the forward FLOPs of encoder (visible patches) + decoder (all patches + CLS)."""
        c, o, b = self.backbone_cfg, self.cfg.objective, batch_per_rank
        n_keep = int(c.grid**2 * (1 - o.mae_mask_ratio))
        encoder = vit_forward_flops(c, [(b, c.img_size, n_keep)])["total"]
        # the decoder as a ViT of its own size: its patch-embedding term equals the pixel prediction head's
        dec = vit_config(
            "vit_s",
            width=o.mae_decoder_width,
            depth=o.mae_decoder_depth,
            heads=o.mae_decoder_heads,
            mlp="gelu",
            patch_size=c.patch_size,
            img_size=c.img_size,
        )
        decoder = vit_forward_flops(dec, [(b, c.img_size)])["total"]
        embed = head_flops(b * (1 + n_keep), [c.width, o.mae_decoder_width])
        return 3 * (encoder + decoder + embed)
