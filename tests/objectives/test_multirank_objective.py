"""2 gloo ranks equal one process on the concatenated batch: Sinkhorn (both backends, uneven and empty shards,
logits of magnitude 12 at T = 0.04) and the EMA centering. One spawn for everything (spawning costs seconds)."""

import pytest
import torch
import torch.nn.functional as F
from fastvit.kernels.sinkhorn import sinkhorn_knopp_ref

from fastvit.objectives.dino import Centering, sinkhorn_knopp
from fastvit.testing import assert_close, run_ranks


def _inputs():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(13, 301, generator=g)
    x = F.normalize(torch.randn(2, 6, 16, generator=g), dim=-1)  # teacher features [T=2 crops, B=6, D]
    w = F.normalize(torch.randn(301, 16, generator=g), dim=-1)
    return t, x, w


def _rank_fn(rank, world):
    t, x, w = _inputs()
    out = {}
    for backend in ("torch", "triton"):
        for name, splits in (("uneven", [2, 4]), ("empty", [6, 0])):
            part = x.split(splits, dim=1)[rank]  # [2, rows of this rank, D]
            targets = sinkhorn_knopp(part, w * 12.0, 0.04, 3, chunk=64, backend=backend)
            out[f"sk_{backend}_{name}"] = targets.materialize()
    center = Centering(301)
    for step in range(2):
        center.update(t.split([5, 8])[rank] * (step + 1))
    out["center"] = center.center.clone()
    factored = Centering(301)
    factored.update_factored(x[:, rank * 3 : rank * 3 + 3], w)
    out["center_factored"] = factored.center.clone()
    return out


def _single_process():
    t, x, w = _inputs()
    center = Centering(301)
    for step in range(2):
        center.update(t * (step + 1))
    factored = Centering(301)
    factored.update_factored(x, w)
    return {
        "sk": sinkhorn_knopp_ref((x.double() @ (w.double() * 12.0).t()).reshape(12, 301), 0.04, 3).view(2, 6, 301),
        "center": center.center,
        "center_factored": factored.center,
    }


@pytest.mark.multirank
def test_two_ranks_equal_concatenated_batch():
    r0, r1 = run_ranks(_rank_fn, 2)
    ref = _single_process()
    for backend in ("torch", "triton"):
        for name in ("uneven", "empty"):
            key = f"sk_{backend}_{name}"
            assert_close(torch.cat([r0[key], r1[key]], dim=1), ref["sk"], atol=1e-5, rtol=1e-3, name=key)
    for key in ("center", "center_factored"):
        assert_close(r0[key], ref[key], atol=1e-6, rtol=1e-5, name=key)
        assert_close(r1[key], ref[key], atol=1e-6, rtol=1e-5, name=key)
