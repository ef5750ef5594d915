"""DINO / iBOT / KoLeo loss functions (DINOv2 semantics, dinov2/loss) and the Web-DINO objective.

All functions accept any float dtype and compute in fp32. The cross-entropies run on the fused
fastvit.ops.soft_cross_entropy (Triton on CUDA, torch on the CPU; `backend=` to choose).
"""

from fastvit.objectives.centering import Centering, sinkhorn_knopp, softmax_center
from fastvit.objectives.koleo import koleo_loss
from fastvit.objectives.losses import dino_cross_entropy, ibot_masks_weight, ibot_patch_loss
from fastvit.objectives.web_dino import WebDINOObjective

__all__ = [
    "softmax_center",
    "sinkhorn_knopp",
    "dino_cross_entropy",
    "koleo_loss",
    "ibot_patch_loss",
    "ibot_masks_weight",
    "Centering",
    "WebDINOObjective",
]
