"""iBOT block masks (DINOv2 semantics) and MAE random masking."""

import numpy as np
import pytest
import torch

from fastvit.data.masking import block_mask, ibot_masks, mae_random_masking


def test_ibot_masks_half_of_crops_with_stratified_ratios():
    n, grid = 64, (14, 14)
    out = ibot_masks(np.random.default_rng(0), n, grid)
    masks = out["masks"]
    counts = masks.sum(1)
    assert masks.shape == (n, 196) and masks.dtype == torch.bool
    assert (counts > 0).sum() == n // 2
    ratios = np.sort(counts[counts > 0].numpy() / 196)
    assert ratios.min() >= 0.05 and ratios.max() <= 0.5  # blocks may stop short of the target, never exceed it
    assert 0.2 < ratios.mean() < 0.35  # targets are uniform over [0.1, 0.5]
    assert torch.equal(out["mask_indices"], masks.view(-1).nonzero().view(-1))
    expected = (1 / counts.clamp(min=1).float())[out["mask_indices"] // 196]
    assert torch.equal(out["mask_weights"], expected) and out["n_masked"] == counts.sum()


def test_block_mask_is_made_of_blocks():
    rng = np.random.default_rng(1)
    m = block_mask(rng, (16, 16), 60)
    assert 30 <= m.sum() <= 60
    # block-wise: most masked patches have a masked 4-neighbour (random masking would give ~25%)
    padded = np.pad(m, 1)
    neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    assert (neighbours & m).sum() / m.sum() > 0.9


def test_ibot_masks_validate_arguments():
    with pytest.raises(ValueError, match="ratio"):
        ibot_masks(np.random.default_rng(0), 4, (4, 4), ratio=(0.5, 0.1))


def test_mae_random_masking():
    g = torch.Generator().manual_seed(0)
    out = mae_random_masking(5, 49, 0.75, generator=g)
    keep, mask, restore = out["keep_idx"], out["mask"], out["restore_idx"]
    assert keep.shape == (5, 12) and mask.shape == (5, 49) and (~mask).sum(1).eq(12).all()
    assert torch.equal(mask.gather(1, keep), torch.zeros(5, 12, dtype=torch.bool))
    shuffle = restore.argsort(1)
    assert torch.equal(shuffle[:, :12], keep)
    assert len({tuple(k.sort().values.tolist()) for k in keep}) == 5  # per-sample shuffles
    again = mae_random_masking(5, 49, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["keep_idx"], keep)


class DINOv2MaskingOracle:
    """A faithful float reimplementation of the published DINOv2 MaskingGenerator (dinov2/data/masking.py):
    Python's `random`, area uniform(min_num_patches, max_mask_patches) in whichever order the bounds come,
    max_num_patches = 0.5 * N as DINOv2's train.py builds it, ten tries per rectangle."""

    def __init__(self, grid, seed, min_num_patches=4, min_aspect=0.3):
        import math
        import random

        self.height, self.width = grid
        self.random = random.Random(seed)
        self.min_num_patches = min_num_patches
        self.max_num_patches = 0.5 * self.height * self.width
        self.log_aspect_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
        self.math = math

    def _mask(self, mask, max_mask_patches):
        delta = 0
        for _ in range(10):
            target_area = self.random.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = self.math.exp(self.random.uniform(*self.log_aspect_ratio))
            h = int(round(self.math.sqrt(target_area * aspect_ratio)))
            w = int(round(self.math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = self.random.randint(0, self.height - h)
                left = self.random.randint(0, self.width - w)
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches):
        """(mask, rectangles added)."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        mask_count = blocks = 0
        while mask_count < num_masking_patches:
            max_mask_patches = min(num_masking_patches - mask_count, self.max_num_patches)
            delta = self._mask(mask, max_mask_patches)
            if delta == 0:
                break
            mask_count += delta
            blocks += 1
        return mask, blocks


def _mask_statistics(generate, grid, n_masks, seed):
    """(fraction of masks short of their target, mean rectangles per mask, mean masked fraction) over masks
    whose targets follow the iBOT draw (ratio uniform in [0.1, 0.5], the stratified draw of ibot_masks)."""
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    short = blocks = masked = 0
    for _ in range(n_masks):
        target = int(n * rng.uniform(0.1, 0.5))
        mask, k = generate(target)
        assert mask.sum() <= target  # neither generator overshoots
        short += int(mask.sum() < target)
        blocks += k
        masked += mask.sum() / n
    return short / n_masks, blocks / n_masks, masked / n_masks


@pytest.mark.parametrize("grid", [(6, 6), (14, 14)])
def test_block_mask_statistics_match_dinov2_masking_generator(grid):
    from fastvit.data.masking import grow_block_mask

    n_masks = 1200
    oracle = DINOv2MaskingOracle(grid, seed=0)
    rng = np.random.default_rng(1)
    ours = _mask_statistics(lambda t: grow_block_mask(rng, grid, t), grid, n_masks, seed=2)
    ref = _mask_statistics(oracle, grid, n_masks, seed=2)
    short, blocks, masked = ours
    short_ref, blocks_ref, masked_ref = ref
    # a shortfall near 0.06 over 1200 masks has a standard error ~0.007 per side: 0.04 is ~4 of the difference's
    assert abs(short - short_ref) < 0.04, f"target shortfall {short:.3f} vs DINOv2's {short_ref:.3f}"
    assert abs(blocks - blocks_ref) < 0.05 * blocks_ref + 0.1, f"rectangles per mask {blocks:.2f} vs {blocks_ref:.2f}"
    assert abs(masked - masked_ref) < 0.01, f"masked fraction {masked:.3f} vs {masked_ref:.3f}"
    assert short_ref < 0.2  # the oracle tops masks up with small rectangles: few fall short


def test_block_mask_tops_up_with_rectangles_smaller_than_min_block():
    """With 3 patches left to fill, DINOv2's draw uniform(4, 3) gives areas in [3, 4]: a 1x3 or 3x1 strip fits."""
    from fastvit.data.masking import grow_block_mask

    rng = np.random.default_rng(0)
    sizes = [grow_block_mask(rng, (8, 8), 3)[0].sum() for _ in range(200)]
    assert np.mean(np.equal(sizes, 3)) > 0.5
