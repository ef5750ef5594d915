"""FSDP2's bf16 policy on one NCCL rank (what a 1-GPU `torchrun` of a bf16 recipe runs with data_parallel=fsdp):
bf16 compute, fp32 master weights and fp32 gradients, against the same model cast to bf16 and run unsharded."""

import copy

import pytest
import torch
import torch.distributed as dist

from fastvit.models.vit import VisionTransformer, vit_config
from fastvit.parallel.mesh import ParallelDims, build_mesh
from fastvit.parallel.parallelize import apply_fsdp
from fastvit.testing import assert_close

pytestmark = pytest.mark.gpu


def _loss(feats):
    return feats["cls"].float().square().mean() + feats["patch"].float().square().mean()


def test_fsdp_bf16_one_rank_matches_an_unsharded_bf16_copy(tmp_path):
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        cfg = vit_config("vit_s", width=128, depth=2, heads=2, patch_size=8, img_size=32, layerscale_init=None)
        model = VisionTransformer(cfg, device="cuda")
        ref = copy.deepcopy(model).to(torch.bfloat16)
        apply_fsdp(model, build_mesh(ParallelDims(dp=1, tp=1, pp=1), "cuda"))
        x = torch.randn(4, 3, 32, 32, device="cuda")
        feats = model(x)
        assert feats["patch"].dtype == torch.bfloat16, "the policy computes in bf16"
        ref_feats = ref(x.to(torch.bfloat16))
        for key in ("cls", "patch"):  # the same bf16 weights and input: the same bf16 arithmetic
            assert_close(feats[key].float(), ref_feats[key].float(), atol=2e-2, rtol=2e-2, name=key)
        _loss(feats).backward()
        _loss(ref_feats).backward()
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            assert (p.grad is None) == (q.grad is None), f"{name}: a gradient on one side only"
            if q.grad is None:  # unused without masks (mask_token)
                continue
            assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, f"{name}: fp32 master weight and grad"
            g, e = p.grad.full_tensor(), q.grad.float()
            scale = e.abs().max().item() + 1e-6
            assert_close(g, e, atol=0.05 * scale, rtol=0.05, name=f"grad {name}")
    finally:
        dist.destroy_process_group()
