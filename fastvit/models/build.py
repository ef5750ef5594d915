"""The one map from the config's model section to a ViT, used by training, evaluation and the planner.

    vit_cfg = backbone_config(cfg.model)              # a ViTConfig (the planner sizes layouts from it)
    vit = build_backbone(cfg.model, device="meta")    # the VisionTransformer every task wraps

Every ModelConfig field but `name` and `init` (the weights a run starts from: fastvit/train/init.py) is a ViTConfig
field of the same name and reaches the ViT as it is, except width / depth / heads / mlp, whose 0 / "" mean "the
size table's". A field added to ModelConfig without a
ViTConfig counterpart is a ValueError here, so no config key is silently dropped on the way to the model.
"""

import dataclasses

from fastvit.models.vit import VisionTransformer, vit_config

TABLE_DEFAULTS = ("width", "depth", "heads", "mlp")  # 0 or "": the size table's value
NOT_VIT = ("name", "init")


def backbone_config(cfg_model):
    """The ViTConfig of a ModelConfig (or of a root Config's `model` section)."""
    m = getattr(cfg_model, "model", cfg_model)
    overrides = {}
    for f in dataclasses.fields(m):
        value = getattr(m, f.name)
        if f.name in NOT_VIT or (f.name in TABLE_DEFAULTS and not value):
            continue
        overrides[f.name] = value
    return vit_config(m.name, **overrides)


def build_backbone(cfg_model, device="meta", dtype=None):
    """The VisionTransformer of a ModelConfig; on the meta device nothing is allocated (to_empty and
    init_weights follow), elsewhere it is initialised."""
    return VisionTransformer(backbone_config(cfg_model), device=device, dtype=dtype)


__all__ = ["backbone_config", "build_backbone"]
