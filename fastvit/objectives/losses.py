"""iBOT's per-patch weights (DINOv2 semantics, dinov2/loss/ibot_patch_loss.py).

The DINO and iBOT cross-entropies themselves run on the factored fused op fastvit.ops.prototype_cross_entropy
(see the Web-DINO objective); the float64 references of the tests materialise the logits instead.
"""


def ibot_masks_weight(masks):
    """masks [n_images, N] bool -> [n_masked] weights 1 / (masked patches of that image), in masks[masks] order."""
    per_image = 1.0 / masks.sum(-1).clamp(min=1).float()  # [n_images]
    return per_image[:, None].expand_as(masks)[masks]
