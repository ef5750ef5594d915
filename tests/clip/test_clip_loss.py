"""The chunked contrastive op (InfoNCE, SigLIP) against the plain float64 reference, gradients included."""

import pytest
import torch
import torch.nn.functional as F
from fastvit.kernels.clip_loss import clip_loss_ref

from fastvit.ops import clip_loss
from fastvit.testing import assert_close, low_precision_tol

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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["infonce", "siglip"])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_clip_loss_autocast_mix(dtype, kind, backend):
    """What autocast hands the loss: low-precision embeddings q and k beside an fp32 learned scale and bias,
    forward and backward inside the region (it used to recast the op's matmuls to low precision). The loss is
    fp32, each gradient has its input's dtype, all within 2x torch's own error against float64 plus one ulp of
    the dtype relative to the value (torch's error on a scalar such as d scale can cancel by chance)."""
    b, B, D, offset = 6, 21, 16, 8
    siglip = kind == "siglip"
    q64, k64 = _unit(b, D), _unit(B, D)
    s64, bias64 = torch.tensor([12.0], dtype=torch.float64), torch.tensor([-4.0], dtype=torch.float64)

    def ref_parts(q, k, s, bias):
        leaves = [t.detach().requires_grad_() for t in (q, k, s, bias)]
        loss = clip_loss_ref(*leaves[:3], offset, leaves[3], siglip)
        return [loss, *torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)]

    expected = ref_parts(q64, k64, s64, bias64)
    leaves = [q64.to(dtype), k64.to(dtype), s64.float(), bias64.float()]
    leaves = [t.requires_grad_() for t in leaves]
    with torch.autocast("cpu", dtype=dtype):
        out = clip_loss(*leaves[:3], offset=offset, kind=kind, logit_bias=leaves[3], backend=backend)
        grads = torch.autograd.grad(out, leaves, allow_unused=True, materialize_grads=True)
    assert out.dtype == torch.float32 and [g.dtype for g in grads] == [t.dtype for t in leaves]
    names = ["loss", "dq", "dk", "dscale", "dbias"]
    for i, (name, a, e) in enumerate(zip(names, [out, *grads], expected)):
        if name == "dbias" and not siglip:
            continue  # InfoNCE has no bias
        tol = low_precision_tol(lambda *t, i=i: ref_parts(*t)[i], [q64, k64, s64, bias64], dtype)
        rtol = torch.finfo(dtype).eps
        assert_close(a, e, atol=tol, rtol=rtol, name=f"{backend} {kind} {name} ({dtype} embeddings, fp32 scale)")


def test_clip_loss_rejects_bad_inputs():
    q, k = _unit(4, 8).float(), _unit(6, 8).float()
    with pytest.raises(ValueError, match="offset"):
        clip_loss(q, k, 10.0, offset=3)
    with pytest.raises(ValueError, match="logit_bias"):
        clip_loss(q, k, 10.0, kind="siglip")
    with pytest.raises(ValueError, match="kind"):
        clip_loss(q, k, 10.0, kind="hinge")
