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
