"""DINO / iBOT / KoLeo pieces (DINOv2 semantics, dinov2/loss), shared by the objectives that use them.

The losses run on factored head outputs (PrototypeLogits): Sinkhorn-Knopp or softmax-centred targets
(fastvit.ops.sinkhorn, fastvit.ops.prototype_targets) and the fused prototype cross-entropy
(fastvit.ops.prototype_cross_entropy); Triton on CUDA, chunked torch on the CPU (`backend=` to choose).
"""

from fastvit.objectives.centering import Centering, softmax_center
from fastvit.objectives.koleo import koleo_loss
from fastvit.objectives.losses import ibot_masks_weight
from fastvit.ops.sinkhorn import sinkhorn_knopp

__all__ = [
    "softmax_center",
    "sinkhorn_knopp",
    "koleo_loss",
    "ibot_masks_weight",
    "Centering",
]
