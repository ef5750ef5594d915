"""DINO and iBOT cross-entropies (DINOv2 semantics, dinov2/loss) on the fused soft cross-entropy op."""

from fastvit.ops.soft_cross_entropy import soft_cross_entropy


def dino_cross_entropy(student_logits, teacher_probs, student_temp, *, backend="auto"):
    """mean over rows of -sum_k p * log_softmax(s / student_temp); inputs [..., K] of the same shape."""
    return soft_cross_entropy(student_logits, teacher_probs, student_temp, backend=backend).mean()


def ibot_masks_weight(masks):
    """masks [n_images, N] bool -> [n_masked] weights 1 / (masked patches of that image), in masks[masks] order."""
    per_image = 1.0 / masks.sum(-1).clamp(min=1).float()  # [n_images]
    return per_image[:, None].expand_as(masks)[masks]


def ibot_patch_loss(student_logits, teacher_probs, masks_weight, n_images, student_temp, *, backend="auto"):
    """sum over masked patches of w * (-sum_k p * log_softmax(s / temp)), divided by n_images.

    student_logits, teacher_probs: [M, K] for the M masked patches; masks_weight [M] (see ibot_masks_weight);
    n_images: the number of images the masks were drawn for (masked or not), e.g. n_global_crops * B.
    """
    if masks_weight.shape != student_logits.shape[:1]:
        raise ValueError(f"masks_weight must be [M] = [{student_logits.shape[0]}], got {tuple(masks_weight.shape)}")
    if n_images < 1:
        raise ValueError(f"ibot_patch_loss needs n_images >= 1, got {n_images}")
    ce = soft_cross_entropy(student_logits, teacher_probs, student_temp, backend=backend)
    return (ce * masks_weight.float()).sum() / n_images
