"""fastvit.data: sources, the fused multi-crop augmentation, masks and the loaders.

Entry point for training: `build_loader(...)`; see fastvit/data/build.py. The DALI loader is
imported only when chosen.
"""

from fastvit.data.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropConfig, draw_sample_params
from fastvit.data.build import build_loader, choose_loader, dali_available
from fastvit.data.loader import Loader, MaskConfig
from fastvit.data.masking import block_mask, ibot_masks, mae_random_masking
from fastvit.data.multicrop import multicrop, multicrop_ref
from fastvit.data.sampler import ResumableSampler
from fastvit.data.sources import source_from_spec

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Loader",
    "MaskConfig",
    "MultiCropConfig",
    "ResumableSampler",
    "block_mask",
    "build_loader",
    "choose_loader",
    "dali_available",
    "draw_sample_params",
    "ibot_masks",
    "mae_random_masking",
    "multicrop",
    "multicrop_ref",
    "source_from_spec",
]
