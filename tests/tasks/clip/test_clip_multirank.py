"""InfoNCE and SigLIP on 2 gloo ranks (local rows vs all-gathered columns) equal one process on the full batch,
gradients of the features, the logit scale and the bias included."""

import pytest
import torch
import torch.nn.functional as F

from fastvit.tasks.clip.objective import CLIPObjective
from fastvit.testing import assert_close, run_ranks

B, D = 10, 12


def _full_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)


def _loss_and_grads(img_raw, txt_raw, kind, backend):
    """Loss and gradients w.r.t. the raw (un-normalised) features, the log scale and the bias."""
    img_raw, txt_raw = img_raw.clone().requires_grad_(), txt_raw.clone().requires_grad_()
    log_scale = torch.tensor([2.3], dtype=img_raw.dtype, requires_grad=True)
    bias = torch.tensor([-2.0], dtype=img_raw.dtype, requires_grad=True)
    out = CLIPObjective(kind, backend=backend)(
        img_bD=F.normalize(img_raw, dim=-1),
        txt_bD=F.normalize(txt_raw, dim=-1),
        logit_scale=log_scale.exp(),
        logit_bias=bias if kind == "siglip" else None,
    )
    out["total"].backward()
    bias_grad = bias.grad if bias.grad is not None else torch.zeros(1, dtype=img_raw.dtype)
    return out["total"].detach(), img_raw.grad, txt_raw.grad, log_scale.grad, bias_grad


def _rank_fn(rank, world, kind, backend):
    img, txt = _full_batch()
    b = B // world
    rows = slice(rank * b, (rank + 1) * b)
    return _loss_and_grads(img[rows].float(), txt[rows].float(), kind, backend)


@pytest.mark.multirank
@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_two_ranks_equal_one_process(kind):
    world = 2
    per_rank = run_ranks(_rank_fn, world, kind, "torch")
    loss, d_img, d_txt, d_scale, d_bias = _loss_and_grads(*_full_batch(), kind, "torch")
    # DDP averages the ranks' gradients; the all-gather sums the feature gradients back to their owners.
    assert_close(torch.stack([r[0] for r in per_rank]).mean(), loss, atol=1e-5, name="loss")
    assert_close(torch.cat([r[1] for r in per_rank]) / world, d_img, atol=1e-6, name="d image features")
    assert_close(torch.cat([r[2] for r in per_rank]) / world, d_txt, atol=1e-6, name="d text features")
    assert_close(sum(r[3] for r in per_rank) / world, d_scale, atol=1e-5, name="d log scale")
    assert_close(sum(r[4] for r in per_rank) / world, d_bias, atol=1e-5, name="d bias")
