"""Tensor parallelism for the ViT blocks, applied from outside the model with DTensor.

Attention is split by heads, the MLP by hidden units (Megatron): attn.qkv and mlp.w12 (mlp.fc1) are
column-parallel, attn.proj and mlp.w3 (mlp.fc2) row-parallel, so each block costs one all-reduce of its
attention output and one of its MLP output in the forward (and two in the backward).

Fused row layouts. qkv.weight is [3d, d] in q, k, v order and w12.weight is [2h, d] as [gate; value].
A plain column shard over tp ranks would hand rank 0 all of q (or all of the gate). So before
sharding, the rows of these fused linears (weight and bias) are reordered from part-major
(part, tp, n_local) to shard-major (tp, part, n_local): the contiguous Shard(0) block of rank r is then
[q_r; k_r; v_r] (its own heads' queries, keys and values) or [gate_r; value_r], which is exactly the local
layout the attention and SwiGLU code expect. The reordering depends on tp, so checkpoints hold every fused
tensor as a (parts, n, ...) tensor in the model's own (part-major) order: `fused_row_chunks` names the pieces of
it a rank's shard holds (views, nothing gathered), and torch.distributed.checkpoint writes and reads them like
any other chunks, resharding to any other layout.

The blocks' modules stay as they are: Attention reads its local head count from the width of qkv's (column-
sharded) output, so a rank runs its heads without a replacement module and parameter names do not change.

Sequence parallel (apply_tp(..., sequence_parallel=True), Megatron-SP): between the column- and row-parallel
linears nothing changes, but the norms, LayerScale and residual adds run on 1/tp of the tokens per rank. The
column-parallel inputs are all-gathered token shards and the row-parallel outputs are reduce-scattered into
token shards (same bytes as the all-reduce, activations between the linears / blocks 1/tp the size). The
packed tokens (T, D) (dense (B, N, D) input is packed as (B * N, D)) are padded to a multiple of tp and split
along T before the first block, and gathered after the last one, by TokenShards' hooks; parameters, their
names and layouts (and so checkpoints) are the same as without it.
"""

import weakref

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from fastvit.models.layers import Packing, SwiGLUMlp

FUSED_PARTS = {"attn.qkv": 3, "mlp.w12": 2}  # module-name suffix -> number of stacked parts in its rows


def fused_parts(fqn):
    """Parts stacked in the rows of the parameter `fqn` (3 for *.attn.qkv.*, 2 for *.mlp.w12.*), else 0; also
    for flattened optimizer keys that name such a parameter (state.<fqn>.exp_avg)."""
    padded = f".{fqn}."
    for module, parts in FUSED_PARTS.items():
        if f".{module}." in padded:
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


@torch.no_grad()
def _reorder_rows_(linear, parts, tp):
    linear.weight.copy_(to_shard_major(linear.weight, parts, tp))
    if linear.bias is not None:
        linear.bias.copy_(to_shard_major(linear.bias, parts, tp))


def _block_plan(block, sequence_parallel):
    """parallelize_module plan of one block. Under sequence parallel the column-parallel linears take token
    shards (all-gathered in the forward, reduce-scattered in the backward) and the row-parallel ones hand back
    token shards (reduce-scattered) instead of all-reducing full tensors."""
    tokens = Shard(0)

    def col():
        return ColwiseParallel(input_layouts=tokens) if sequence_parallel else ColwiseParallel()

    def row():
        return RowwiseParallel(output_layouts=tokens) if sequence_parallel else RowwiseParallel()

    fc_in, fc_out = ("mlp.w12", "mlp.w3") if isinstance(block.mlp, SwiGLUMlp) else ("mlp.fc1", "mlp.fc2")
    return {"attn.qkv": col(), "attn.proj": row(), fc_in: col(), fc_out: row()}


def apply_tp(blocks, tp_mesh, *, sequence_parallel=False):
    """Shards every block in place over the 1-D `tp_mesh` (a no-op for one rank). Works on meta modules.

    sequence_parallel: norms, LayerScale and residual adds run on 1/tp of the tokens on each rank (see
    TokenShards, whose hooks object is returned; None otherwise)."""
    tp = tp_mesh.size()
    if tp == 1:
        return None
    blocks = list(blocks)
    for block in blocks:
        assert block.attn.heads % tp == 0, f"tp={tp} must divide the {block.attn.heads} heads"
        _reorder_rows_(block.attn.qkv, 3, tp)
        if isinstance(block.mlp, SwiGLUMlp):
            _reorder_rows_(block.mlp.w12, 2, tp)
        parallelize_module(block, tp_mesh, _block_plan(block, sequence_parallel))
    return TokenShards(blocks, tp_mesh) if sequence_parallel else None


# ---- sequence parallel: token shards between the blocks ----------------------------------------------


def shard_tokens(x, tp_mesh):
    """This tp rank's block of rows of x (the same on every tp rank; rows divisible by tp). Backward: all-gather."""
    full = DTensor.from_local(x, tp_mesh, [Replicate()], run_check=False)
    return full.redistribute(tp_mesh, [Shard(0)]).to_local()


def gather_tokens(x, tp_mesh):
    """The tp ranks' row blocks x concatenated in rank order. Backward: this rank's block of the (replicated) grad."""
    shards = DTensor.from_local(x, tp_mesh, [Shard(0)], run_check=False)
    return shards.redistribute(tp_mesh, [Replicate()]).to_local()


_SHARD_MARK = "_fastvit_token_shard"  # set on the token shards made before the first block


class TokenShards:
    """Sequence parallel over a list of tensor-parallel blocks, from outside the model (forward hooks).

    From the input of blocks[0] to the output of blocks[-1] each tp rank holds 1/tp of the tokens, as rows of
    packed tokens (T, D) (dim 0). Dense input (B, N, D) is packed first, (B * N, D) with one sequence per image,
    so the blocks take their packed path (same math, per-image attention through cu_seqlens) and padding costs
    at most tp - 1 tokens, never whole images. Before blocks[0] the replicated tokens are padded with zero rows
    to a multiple of tp and split; the pad rows form one more sequence of the Packing handed to every block, so
    attention never mixes them into a real image. After blocks[-1] the shards are all-gathered, the padding is
    stripped (and dense input reshaped back), so the model's code around the blocks sees the same replicated
    tensors as without sequence parallel.

    The replicated parameters (norms, LayerScale) see only this rank's tokens, so a hook on each sums their
    gradient over tp before it is accumulated. Drop path samples whole images, which a token shard does not
    hold: training a block with drop_path > 0 raises a ValueError (eval and teachers are fine).
    """

    def __init__(self, blocks, tp_mesh):
        assert blocks, "sequence parallel needs at least one block"
        self.mesh, self.tp, self.group = tp_mesh, tp_mesh.size(), tp_mesh.get_group()
        self.first = blocks[0]
        # the current forward: the model's Packing (None: dense) and the packed one the blocks get instead,
        # the unpadded token count and the dense input's (B, N, D) (None: packed)
        self.src = self.padded = None
        self.n_real, self.dense_shape = 0, None
        self.hooked = {}  # id -> weakref of the parameters whose grads are summed over tp
        # the hooks do python bookkeeping (identity checks) that compiled blocks should not trace or guard on
        pre_block, post_last = torch.compiler.disable(self._pre_block), torch.compiler.disable(self._post_last)
        for block in blocks:
            block.register_forward_pre_hook(pre_block, with_kwargs=True)
        blocks[-1].register_forward_hook(post_last)

    def _pre_block(self, block, args, kwargs):
        if block.training and block.drop_path > 0.0:
            raise ValueError(
                f"parallel.sequence_parallel cannot train blocks with drop_path={block.drop_path} (it drops whole "
                "images, a rank holds token shards); set model.drop_path=0 or parallel.sequence_parallel=false"
            )
        self._sum_grads_over_tp(block)
        x, packing = args[0], (args[1] if len(args) > 1 else kwargs.get("packing"))
        if block is self.first and not getattr(x, _SHARD_MARK, False):  # marked: checkpoint's recompute
            x, packing = self._shard(x, packing)
        elif packing is self.src:  # the model's Packing (None when dense) -> the one the shards were cut with
            packing = self.padded
        else:
            return None
        return (x, packing), {k: v for k, v in kwargs.items() if k != "packing"}

    def _shard(self, x, packing):
        """The replicated input of the first block -> this rank's token shard and the Packing the blocks use."""
        self.src, self.dense_shape = packing, None
        if packing is None:  # dense (B, N, D): the same tokens packed, one sequence per image
            self.dense_shape = x.shape
            B, N, D = x.shape
            x, packing = x.reshape(B * N, D), Packing.from_seqlens([N] * B, x.device)
        T = x.shape[0]
        if packing.total != T:
            raise ValueError(f"packed tokens have {T} rows but their Packing covers {packing.total}")
        pad = -T % self.tp
        if pad:  # zero rows, one more sequence: they attend only among themselves
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
            packing = Packing.from_seqlens(packing.seqlens + (pad,), packing.cu_seqlens.device)
        self.n_real, self.padded = T, packing
        x_local = shard_tokens(x, self.mesh)  # ((T + pad) / tp, D)
        setattr(x_local, _SHARD_MARK, True)
        return x_local, packing

    def _post_last(self, block, args, out):
        # a copy, not a view (to_local and the strip make views): FSDP2 hooks the block's output and warns on
        # views, since an in-place op on one would skip its pre-backward hook. One (T, D) copy per forward.
        x_TD = gather_tokens(out, self.mesh)[: self.n_real]
        return (x_TD if self.dense_shape is None else x_TD.view(self.dense_shape)).clone()

    def _sum_grads_over_tp(self, block):
        """Hooks the grads of the block's replicated parameters, once per parameter object (FSDP2 swaps its
        unsharded parameters in before this runs, and keeps them from step to step). DTensor parameters are
        tensor-parallel and get their grads from DTensor itself."""
        if not torch.is_grad_enabled():
            return
        for p in block.parameters():
            if not p.requires_grad or isinstance(p, DTensor):
                continue
            seen = self.hooked.get(id(p))
            if seen is None or seen() is not p:  # weak, and checked: an id can be reused once a tensor dies
                p.register_hook(self._sum_over_tp)
                self.hooked[id(p)] = weakref.ref(p)

    def _sum_over_tp(self, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=self.group)
        return grad


# ---- layout-free views for checkpoints and comparisons -----------------------------------------------


def _tp_axis(t):
    """Index of the "tp" mesh dim of DTensor t when it is row-sharded there (a reordered fused tensor), else None."""
    names = t.device_mesh.mesh_dim_names or ()
    if "tp" not in names:
        return None
    i = names.index("tp")
    p = t.placements[i]
    return i if isinstance(p, Shard) and p.dim == 0 and t.device_mesh.size(i) > 1 else None


def fused_row_chunks(t, parts):
    """This rank's rows of the fused tensor `t` (qkv / w12 weight or bias, or one of their optimizer moments) as
    pieces of its canonical (parts, n, ...) view in the model's own (part-major) row order, without copying:
    [(offsets, sizes, view of the local shard)], offsets and sizes in the (parts, n, ...) view.

    The local shard of a DTensor is a contiguous block of global rows in shard-major order (tp, parts, n / tp)
    (FSDP2 splits a tp rank's rows further into contiguous blocks); each run of it within one (tp rank, part)
    block is contiguous in the canonical view too, so a shard maps to at most parts + 2 pieces per tp block it
    touches. A plain tensor (one process) is its parts' pieces. DCP writes and reads these pieces like any other
    chunks (fastvit.train.dcp_sharded), so a checkpoint is layout-free and nothing is gathered."""
    if isinstance(t, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        sizes, offsets = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        local, tp_i = t.to_local(), _tp_axis(t)
        tp = t.device_mesh.size(tp_i) if tp_i is not None else 1
    else:
        local, sizes, offsets, tp = t, tuple(t.shape), (0,) * t.dim(), 1
    rows = t.shape[0]
    assert rows % (parts * tp) == 0, f"{rows} fused rows do not split into {parts} parts x tp={tp}"
    n = rows // (parts * tp)  # rows of one part on one tp rank
    rest_off, rest = tuple(offsets[1:]), tuple(sizes[1:])
    out, g, end = [], offsets[0], offsets[0] + sizes[0]
    while g < end:
        block, i = divmod(g, n)
        rank, part = divmod(block, parts)
        run = min(n - i, end - g)
        view = local[g - offsets[0] : g - offsets[0] + run].unsqueeze(0)  # (1, run, ...)
        out.append(((part, rank * n + i, *rest_off), (1, run, *rest), view))
        g += run
    return out


def canonical_size(t, parts):
    """The (parts, n, ...) shape under which checkpoints hold the fused tensor `t`."""
    return torch.Size((parts, t.shape[0] // parts, *t.shape[1:]))
