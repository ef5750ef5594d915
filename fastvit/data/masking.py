"""Patch masks: iBOT block-wise masks (DINOv2 semantics) and MAE random masking.

iBOT: of the n global crops of a batch, `int(n * prob)` are masked (prob 0.5: half of them);
their ratios are stratified over [ratio_min, ratio_max] (crop i draws its ratio uniformly from
the i-th of equal sub-intervals), each mask is grown from random rectangles until it holds
int(ratio * N) patches or ten tries in a row add none, and the masked crops are shuffled among the
unmasked ones.

The area draw is DINOv2's MaskingGenerator: each rectangle's area is uniform between min_block (4)
and the patches still allowed, min(remaining, N / 2); when fewer than 4 remain that interval runs
downwards (uniform(4, 2) is uniform over [2, 4]), so small rectangles top the mask up to its target.
Aspect ratios are log-uniform in [0.3, 1/0.3]; a rectangle is kept when it adds at least one patch and
no more than allowed.
"""

import math

import numpy as np
import torch


def grow_block_mask(
    rng: np.random.Generator,
    grid: tuple[int, int],
    n_target: int,
    *,
    min_block: int = 4,
    max_block: float | None = None,
) -> tuple[np.ndarray, int]:
    """((gh, gw) bool mask grown from rectangles up to n_target patches, number of rectangles added).

    max_block: the largest area one rectangle may add (default N / 2, DINOv2's max_num_patches)."""
    gh, gw = grid
    max_block = max_block if max_block is not None else 0.5 * gh * gw
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    mask = np.zeros(grid, bool)
    count = blocks = 0
    while count < n_target:
        allowed = min(n_target - count, max_block)
        added = 0
        for _ in range(10):
            area = min_block + (allowed - min_block) * rng.random()  # uniform(min_block, allowed), either order
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (0 < h < gh and 0 < w < gw):
                continue
            top, left = int(rng.integers(0, gh - h + 1)), int(rng.integers(0, gw - w + 1))
            new = h * w - int(mask[top : top + h, left : left + w].sum())
            if 0 < new <= allowed:
                mask[top : top + h, left : left + w] = True
                added = new
                break
        if added == 0:
            break
        count += added
        blocks += 1
    return mask, blocks


def block_mask(
    rng: np.random.Generator,
    grid: tuple[int, int],
    n_target: int,
    *,
    min_block: int = 4,
    max_block: float | None = None,
) -> np.ndarray:
    """(gh, gw) bool mask grown from rectangles until it holds about n_target patches (never more)."""
    return grow_block_mask(rng, grid, n_target, min_block=min_block, max_block=max_block)[0]


def ibot_masks(
    rng: np.random.Generator,
    n_crops: int,
    grid: tuple[int, int],
    *,
    ratio: tuple[float, float] = (0.1, 0.5),
    prob: float = 0.5,
) -> dict:
    """Masks for n_crops global crops (crop-major order) on a (gh, gw) patch grid.

    Returns masks (n_crops, gh*gw) bool, mask_indices (M,) int64 flat indices into masks.view(-1),
    mask_weights (M,) float32 = 1 / (masked patches of that crop), n_masked (int M) and mask_counts (n_crops,)
    int64, the masked patches of each crop (host-side: a pipeline splits the M patches by microbatch with them).
    """
    if not 0 <= ratio[0] <= ratio[1] < 1:
        raise ValueError(f"mask ratio must satisfy 0 <= low <= high < 1, got {ratio}")
    if not 0 <= prob <= 1:
        raise ValueError(f"mask probability must be in [0, 1], got {prob}")
    n_patches = grid[0] * grid[1]
    n_masked_crops = int(n_crops * prob)
    bounds = np.linspace(ratio[0], ratio[1], n_masked_crops + 1)
    masks = np.zeros((n_crops, n_patches), bool)
    for i in range(n_masked_crops):
        target = int(n_patches * rng.uniform(bounds[i], bounds[i + 1]))
        masks[i] = block_mask(rng, grid, target).reshape(-1)
    masks = masks[rng.permutation(n_crops)]
    masks_t = torch.from_numpy(masks)
    indices = masks_t.view(-1).nonzero().view(-1)
    counts = masks_t.sum(1)
    weights = (1.0 / counts.clamp(min=1).float())[:, None].expand_as(masks_t)[masks_t]
    return {
        "masks": masks_t,
        "mask_indices": indices,
        "mask_weights": weights,
        "n_masked": int(indices.numel()),
        "mask_counts": counts,
    }


def mae_random_masking(
    batch: int, n_patches: int, ratio: float = 0.75, *, generator: torch.Generator | None = None, device=None
) -> dict:
    """MAE masking: each sample keeps a random subset of int(n_patches * (1 - ratio)) patches.

    Returns keep_idx (B, K) int64 (the kept patches, in shuffled order), mask (B, N) bool (True:
    removed), restore_idx (B, N) int64 (argsort of the shuffle, to unshuffle decoder tokens).
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"MAE mask ratio must be in [0, 1), got {ratio}")
    n_keep = int(n_patches * (1 - ratio))
    noise = torch.rand(batch, n_patches, generator=generator, device=generator.device if generator else device)
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, n_patches, dtype=torch.bool, device=noise.device)
    mask[:, :n_keep] = False
    return {"keep_idx": shuffle[:, :n_keep], "mask": mask.gather(1, restore), "restore_idx": restore}
