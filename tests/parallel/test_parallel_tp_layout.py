"""The fused-row layout of tensor parallelism, checked in one process by summing simulated ranks."""

import pytest
import torch
from torch import nn

from fastvit.config import ParallelConfig
from fastvit.models.layers import Attention, Packing, SwiGLUMlp
from fastvit.models.vit import vit_config
from fastvit.parallel.mesh import ParallelDims, check_model_fits, resolve_dims
from fastvit.parallel.tp import fused_parts, to_part_major, to_shard_major
from fastvit.testing import assert_close


def _local_linear(full, rows=None, cols=None, bias=True):
    w = full.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias:
            lin.bias.copy_(full.bias.detach()[rows] if rows is not None else full.bias.detach())
    return lin


@pytest.mark.parametrize("tp", [2, 4])
def test_shard_major_rows_give_each_rank_its_q_k_v(tp):
    d = 16
    rows = torch.arange(3 * d)
    perm = to_shard_major(rows, 3, tp)
    n = d // tp
    for r in range(tp):
        mine = perm[r * 3 * n : (r + 1) * 3 * n].view(3, n)
        for part in range(3):  # q, k, v rows of heads r*H/tp ... (r+1)*H/tp - 1
            assert torch.equal(mine[part], torch.arange(part * d + r * n, part * d + (r + 1) * n))
    assert torch.equal(to_part_major(perm, 3, tp), rows)
    assert fused_parts("backbone.blocks.3.attn.qkv.weight") == 3 and fused_parts("blocks.0.mlp.w12.bias") == 2
    assert fused_parts("blocks.0.attn.proj.weight") == 0 and fused_parts("head.mlp.0.weight") == 0


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("packed", [False, True])
def test_attention_with_sharded_qkv_runs_its_heads_and_partials_sum(tp, packed):
    torch.manual_seed(0)
    d, H = 32, 4
    attn = Attention(d, H).double()
    nn.init.normal_(attn.qkv.bias)
    seqlens = [5, 2, 7]
    x = torch.randn(sum(seqlens), d, dtype=torch.float64) if packed else torch.randn(3, 5, d, dtype=torch.float64)
    packing = Packing.from_seqlens(seqlens, "cpu") if packed else None
    expected = attn(x, packing)
    rows = to_shard_major(torch.arange(3 * d), 3, tp).view(tp, -1)
    out = attn.proj.bias.detach().clone()
    for r in range(tp):
        local = Attention(d, H).double()
        local.qkv = _local_linear(attn.qkv, rows=rows[r]).double()
        local.proj = _local_linear(attn.proj, cols=torch.arange(r * d // tp, (r + 1) * d // tp), bias=False).double()
        out = out + local(x, packing)  # the same module: its heads come from qkv's (local) output width
    assert_close(out, expected, atol=1e-6, name=f"tp={tp} packed={packed}")  # ops.attention may run fp32 inside


def test_swiglu_shard_major_halves_keep_gate_and_value_together():
    torch.manual_seed(0)
    d, h, tp = 16, 24, 2
    mlp = SwiGLUMlp(d, h).double()
    x = torch.randn(7, d, dtype=torch.float64)
    rows = to_shard_major(torch.arange(2 * h), 2, tp).view(tp, -1)
    out = mlp.w3.bias.detach().clone()
    for r in range(tp):
        local = SwiGLUMlp(d, h // tp).double()
        local.w12 = _local_linear(mlp.w12, rows=rows[r]).double()
        local.w3 = _local_linear(mlp.w3, cols=torch.arange(r * h // tp, (r + 1) * h // tp), bias=False).double()
        out = out + local(x)
    assert_close(out, mlp(x), atol=1e-12, name="swiglu tp=2")


def test_dims_are_validated_with_clear_errors():
    vit7b = vit_config("vit_7b")
    assert resolve_dims(ParallelConfig(tp=4, pp=2), 64, vit7b) == ParallelDims(dp=8, tp=4, pp=2)
    with pytest.raises(ValueError, match="tp=3 does not divide the 32 attention heads"):
        resolve_dims(ParallelConfig(tp=3), 6, vit7b)
    with pytest.raises(ValueError, match="MLP hidden size 10928"):
        resolve_dims(ParallelConfig(tp=32), 64, vit7b)
    with pytest.raises(ValueError, match="depth 32"):
        resolve_dims(ParallelConfig(pp=3), 6, vit7b)
    with pytest.raises(ValueError, match="!= world size 8"):
        resolve_dims(ParallelConfig(dp=2, tp=2), 8, vit7b)
    with pytest.raises(ValueError, match="world size 6 is not divisible"):
        resolve_dims(ParallelConfig(tp=4), 6)
    with pytest.raises(ValueError, match="parallel.tp must be a positive integer"):
        resolve_dims(ParallelConfig(tp=0), 4)
    with pytest.raises(ValueError, match="depth 32"):
        check_model_fits(ParallelDims(dp=1, tp=1, pp=4, virtual_stages=3), vit7b)
