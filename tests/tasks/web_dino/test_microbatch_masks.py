"""split_masks places the loader's masked patches per pipeline microbatch, as each microbatch's own masks would."""

import numpy as np
import pytest
import torch

from fastvit.data.masking import ibot_masks
from fastvit.tasks.web_dino.microbatch_masks import split_masks


@pytest.mark.parametrize("B,n_micro,n_global", [(8, 4, 2), (6, 3, 3), (5, 5, 2), (4, 1, 2)])
def test_split_masks_equals_each_microbatchs_own_masks(B, n_micro, n_global):
    grid = (5, 4)
    N = grid[0] * grid[1]
    m = ibot_masks(np.random.default_rng(B + n_micro), n_global * B, grid, ratio=(0.1, 0.6), prob=0.75)
    plan = split_masks(
        m["mask_counts"], m["mask_indices"], m["mask_weights"], B=B, n_global=n_global, n_micro=n_micro, n_patches=N
    )
    b = B // n_micro
    masks_GBN = m["masks"].view(n_global, B, N)
    weights_GBN = torch.zeros(n_global, B, N)
    weights_GBN.view(-1)[m["mask_indices"]] = m["mask_weights"]
    assert sum(plan.counts) == m["n_masked"] and plan.starts[0] == 0
    for k in range(n_micro):
        own = masks_GBN[:, k * b : (k + 1) * b].reshape(n_global * b, N)  # microbatch k's crop-major masks
        expected = own.reshape(-1).nonzero().squeeze(1)
        M = plan.counts[k]
        assert torch.equal(plan.indices_KM[k, :M], expected), k
        own_w = weights_GBN[:, k * b : (k + 1) * b].reshape(-1)
        assert torch.equal(plan.weights_KM[k, :M], own_w[expected]), k
        assert plan.starts[k] == sum(plan.counts[:k])
    W = plan.indices_KM.shape[1]
    real = plan.unpad(torch.arange(n_micro * W)[:, None])
    expected = torch.cat([k * W + torch.arange(M) for k, M in enumerate(plan.counts)])[:, None]
    assert torch.equal(real, expected)


def test_pipelined_inputs_without_masks_have_no_masked_patches():
    """A batch without iBOT masks: all-False masks travel down the pipeline and no microbatch has masked rows."""
    from types import SimpleNamespace

    from fastvit.tasks.web_dino.pipelined import CropLayout, PipelinedWebDINOTask

    layout = CropLayout(n_global=2, global_len=17, n_local=3, local_len=5, n_prefix=1)
    task = SimpleNamespace(layout=layout, n_micro=2, _check_batch=lambda b: None)
    B = 4
    batch = {"global_crops": torch.randn(2 * B, 3, 8, 8), "local_crops": torch.randn(3 * B, 3, 4, 4)}
    student, teacher, got_B, masked = PipelinedWebDINOTask._image_major_inputs(task, batch)
    assert got_B == B and [x.shape[:2] for x in student] == [(B, 2), (B, 3), (B, 2)]
    assert not student[-1].any() and student[-1].shape == (B, 2, 16)
    assert masked.counts == (0, 0) and masked.indices_KM.shape == (2, 0)
