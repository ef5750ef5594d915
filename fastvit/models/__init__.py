"""fastvit.models: the Web-SSL ViT family, its layers and FLOP counting."""

from fastvit.models.flops import head_flops, vit_forward_flops
from fastvit.models.vit import VIT_SIZES, VisionTransformer, ViTConfig, build_vit, num_params, swiglu_hidden, vit_config

__all__ = [
    "VIT_SIZES",
    "ViTConfig",
    "VisionTransformer",
    "build_vit",
    "head_flops",
    "num_params",
    "swiglu_hidden",
    "vit_config",
    "vit_forward_flops",
]
