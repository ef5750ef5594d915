"""The chunked contrastive op (InfoNCE, SigLIP) against the plain float64 reference, gradients included."""

import pytest
import torch
import torch.nn.functional as F
from fastvit.kernels.clip_loss import clip_loss_ref

from fastvit.ops import clip_loss
from fastvit.testing import assert_close

# (local rows b, global columns B, D, offset, chunk rows): one chunk, ragged chunks, one row per chunk,
# more columns than one Triton block (1024), a prime width
CASES = [(37, 37, 64, 0, 0), (5, 13, 7, 4, 2), (3, 50, 16, 47, 1), (6, 1500, 8, 700, 4)]


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("kind", ["infonce", "siglip"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_clip_loss_matches_float64(case, kind, backend):
    b, B, D, offset, chunk = case
    q64, k64 = _unit(b, D).requires_grad_(), _unit(B, D).requires_grad_()
    s64 = torch.tensor([12.0], dtype=torch.float64, requires_grad=True)
    bias64 = torch.tensor([-4.0], dtype=torch.float64, requires_grad=True)
    siglip = kind == "siglip"
    leaves64 = [q64, k64, s64] + [bias64] * siglip
    ref = clip_loss_ref(q64, k64, s64, offset, bias64, siglip)
    grads_ref = torch.autograd.grad(ref, leaves64)
    leaves = [t.detach().float().requires_grad_() for t in leaves64]
    out = clip_loss(
        leaves[0],
        leaves[1],
        leaves[2],
        offset=offset,
        kind=kind,
        logit_bias=leaves[3] if siglip else None,
        chunk_rows=chunk,
        backend=backend,
    )
    grads = torch.autograd.grad(2.0 * out, leaves)
    assert_close(out, ref, atol=2e-5, rtol=1e-5, name="loss")
    for name, g, e in zip(["dq", "dk", "dscale", "dbias"], grads, grads_ref):
        assert_close(g, 2.0 * e, atol=2e-5, rtol=1e-4, name=name)


def test_clip_loss_rejects_bad_inputs():
    q, k = _unit(4, 8).float(), _unit(6, 8).float()
    with pytest.raises(ValueError, match="offset"):
        clip_loss(q, k, 10.0, offset=3)
    with pytest.raises(ValueError, match="logit_bias"):
        clip_loss(q, k, 10.0, kind="siglip")
    with pytest.raises(ValueError, match="kind"):
        clip_loss(q, k, 10.0, kind="hinge")
