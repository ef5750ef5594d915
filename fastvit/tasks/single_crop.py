"""One random-resized crop + flip per image: the data of the objectives without multi-crop (Web-MAE, CLIP)."""

import torch

from fastvit.data import MultiCropConfig, build_loader


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
    """Random normalised crops (B, 3, S, S) of the recipe's size."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.data.global_crops_size
    x = torch.randn(batch, 3, size, size, generator=g)
    return {"global_crops": x.to(device)}
