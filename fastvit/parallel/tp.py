"""Tensor parallelism for the ViT blocks, applied from outside the model with DTensor.

Attention is split by heads, the MLP by hidden units (Megatron): attn.qkv and mlp.w12 (mlp.fc1) are
column-parallel, attn.proj and mlp.w3 (mlp.fc2) row-parallel, so each block costs one all-reduce of its
attention output and one of its MLP output in the forward (and two in the backward).

Fused row layouts. qkv.weight is [3d, d] in q, k, v order and w12.weight is [2h, d] as [gate; value].
A plain column shard over tp ranks would hand rank 0 all of q (or all of the gate). So before
sharding, the rows of these fused linears (weight and bias) are reordered from part-major
(part, tp, n_local) to shard-major (tp, part, n_local): the contiguous Shard(0) block of rank r is then
[q_r; k_r; v_r] (its own heads' queries, keys and values) or [gate_r; value_r], which is exactly the local
layout the attention and SwiGLU code expect. The reordering depends on tp, so checkpoints go through
`canonical_state`, which presents every fused tensor as a (parts, n, ...) DTensor in the model's own
(part-major) order; torch.distributed.checkpoint then reshards it to any other layout.

The block's Attention is replaced by HeadShardedAttention (same qkv / proj submodules, so parameter names
are unchanged) because Attention.forward derives the head dim from the full input width.
"""

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from fastvit import ops
from fastvit.models.layers import Attention, SwiGLUMlp

FUSED_PARTS = {"attn.qkv": 3, "mlp.w12": 2}  # module-name suffix -> number of stacked parts in its rows


def fused_parts(fqn):
    """Parts stacked in the rows of the parameter `fqn` (3 for *.attn.qkv.*, 2 for *.mlp.w12.*), else 0."""
    module = fqn.rsplit(".", 1)[0]
    for suffix, parts in FUSED_PARTS.items():
        if module == suffix or module.endswith("." + suffix):
            return parts
    return 0


def to_shard_major(t, parts, tp):
    """Rows (parts, tp, n) -> (tp, parts, n): the row order under which a Shard(0) block is [q_r; k_r; v_r]."""
    rest = t.shape[1:]
    return t.reshape(parts, tp, -1, *rest).transpose(0, 1).reshape(t.shape)


def to_part_major(t, parts, tp):
    """Inverse of to_shard_major: rows (tp, parts, n) -> (parts, tp, n)."""
    rest = t.shape[1:]
    return t.reshape(tp, parts, -1, *rest).transpose(0, 1).reshape(t.shape)


class HeadShardedAttention(nn.Module):
    """Attention over this rank's heads: qkv (column-parallel, shard-major rows) gives (.., 3, H_local, Dh)
    and proj (row-parallel) sums the ranks' partial outputs. Dense (B, N, D) or packed (T, D) + Packing."""

    def __init__(self, attn: Attention, tp: int):
        super().__init__()
        assert attn.heads % tp == 0, f"tp={tp} must divide the {attn.heads} heads"
        self.qkv = attn.qkv
        self.proj = attn.proj
        self.heads = attn.heads // tp  # local heads
        self.head_dim = attn.qkv.in_features // attn.heads

    def forward(self, x, packing=None):
        H, Dh = self.heads, self.head_dim
        if packing is None:
            B, N, _ = x.shape
            qkv = self.qkv(x).view(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H_local, N, Dh)
            o_BHND = ops.attention(qkv[0], qkv[1], qkv[2])
            return self.proj(o_BHND.transpose(1, 2).reshape(B, N, H * Dh))
        T = x.shape[0]
        q, k, v = self.qkv(x).view(T, 3, H, Dh).unbind(1)  # each (T, H_local, Dh)
        o_THD = ops.attention(q, k, v, cu_seqlens=packing.cu_seqlens, max_seqlen=packing.max_seqlen)
        return self.proj(o_THD.reshape(T, H * Dh))


@torch.no_grad()
def _reorder_rows_(linear, parts, tp):
    linear.weight.copy_(to_shard_major(linear.weight, parts, tp))
    if linear.bias is not None:
        linear.bias.copy_(to_shard_major(linear.bias, parts, tp))


def apply_tp(blocks, tp_mesh):
    """Shards every block in place over the 1-D `tp_mesh` (a no-op for one rank). Works on meta modules."""
    tp = tp_mesh.size()
    if tp == 1:
        return
    for block in blocks:
        _reorder_rows_(block.attn.qkv, 3, tp)
        block.attn = HeadShardedAttention(block.attn, tp)
        plan = {"attn.qkv": ColwiseParallel(), "attn.proj": RowwiseParallel()}
        if isinstance(block.mlp, SwiGLUMlp):
            _reorder_rows_(block.mlp.w12, 2, tp)
            plan.update({"mlp.w12": ColwiseParallel(), "mlp.w3": RowwiseParallel()})
        else:
            plan.update({"mlp.fc1": ColwiseParallel(), "mlp.fc2": RowwiseParallel()})
        parallelize_module(block, tp_mesh, plan)


# ---- layout-free views for checkpoints and comparisons -----------------------------------------------


def _tp_axis(t):
    """Index of the "tp" mesh dim of DTensor t when it is row-sharded there (a reordered fused tensor), else None."""
    names = t.device_mesh.mesh_dim_names or ()
    if "tp" not in names:
        return None
    i = names.index("tp")
    p = t.placements[i]
    return i if isinstance(p, Shard) and p.dim == 0 and t.device_mesh.size(i) > 1 else None


def _canonical_dtensor(t, parts):
    """(parts, n, ...) DTensor in part-major order for a fused DTensor t, plus t's tp-local gathered copy (or None
    when no copy was needed, i.e. the view aliases t)."""
    mesh, tp_i = t.device_mesh, _tp_axis(t)
    keep = [p if i == tp_i else Replicate() for i, p in enumerate(t.placements)]
    g = t if keep == list(t.placements) else t.redistribute(mesh, keep)  # gather over the non-tp axes
    local = g.to_local()
    view = local.view(parts, -1, *local.shape[1:])
    placements = [Shard(1) if i == tp_i else Replicate() for i in range(mesh.ndim)]
    shape = torch.Size((parts, t.shape[0] // parts, *t.shape[1:]))
    out = DTensor.from_local(view, mesh, placements, run_check=False, shape=shape, stride=_contiguous(shape))
    return out, (g if g is not t else None)


def _contiguous(shape):
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= n
    return tuple(reversed(stride))


def canonical_state(state):
    """A copy of the nested state dict `state` (model and optimizer state dicts keyed by parameter FQN, as
    torch.distributed.checkpoint.state_dict.get_state_dict returns them) in which every tensor of a fused
    linear (*.attn.qkv.*, *.mlp.w12.*, and their optimizer moments) is a (parts, n, ...) tensor in the
    model's own row order, whatever the tp / dp layout. Returns (state, finish): save `state` with DCP, or
    load into it with DCP and then call finish() to copy the loaded values back into the sharded tensors."""
    writebacks = []

    def convert(t, parts):
        if not isinstance(t, DTensor):
            return t.view(parts, -1, *t.shape[1:])
        out, gathered = _canonical_dtensor(t, parts)
        if gathered is not None:
            writebacks.append((t, gathered))
        return out

    def walk(node, parts=0):
        if isinstance(node, dict):  # a key naming a fused parameter sets `parts` for everything below it
            return {k: walk(v, (isinstance(k, str) and fused_parts(k)) or parts) for k, v in node.items()}
        if parts and torch.is_tensor(node) and node.dim() >= 1:
            return convert(node, parts)
        return node

    out = walk(state)

    def finish():
        with torch.no_grad():
            for t, g in writebacks:
                t.to_local().copy_(g.redistribute(t.device_mesh, t.placements).to_local())

    return out, finish


def gather_canonical(t, fqn):
    """The full tensor of parameter (or gradient / moment) `t` named `fqn`, in the model's own row order."""
    full = t.full_tensor() if isinstance(t, DTensor) else t
    parts = fused_parts(fqn)
    if parts and isinstance(t, DTensor):
        tp_i = _tp_axis(t)
        if tp_i is not None:
            full = to_part_major(full, parts, t.device_mesh.size(tp_i))
    return full
