"""Transformer layers of the Web-SSL / DINOv2 ViT: norm, LayerScale, attention, MLPs, block, drop path.

Every layer runs on dense tokens x (B, N, D) or on packed tokens x (T, D) described by a Packing
(all crops of a step concatenated into one token sequence, one sequence per image). Parameter names
follow the native Web-SSL / DINOv2 layout (norm1, attn.qkv, attn.proj, ls1.gamma, mlp.w12, mlp.w3, ...).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastvit import ops
from fastvit.host_copy import to_device_async
from fastvit.ops.attention import BACKENDS as ATTENTION_BACKENDS


@dataclass(frozen=True)
class Packing:
    """Where each sequence lives in a packed (T, D) token tensor.

    seqlens: host-side lengths (S,), so subsets can be formed without a device sync;
    cu_seqlens: the same as int32 offsets (S+1,) on the tokens' device; max_seqlen: max(seqlens).
    """

    seqlens: tuple[int, ...]
    cu_seqlens: torch.Tensor
    max_seqlen: int

    @staticmethod
    def from_seqlens(seqlens, device):
        seqlens = tuple(int(n) for n in seqlens)
        offsets = [0]
        for n in seqlens:
            offsets.append(offsets[-1] + n)
        return Packing(seqlens, to_device_async(offsets, torch.int32, device), max(seqlens))

    @property
    def total(self):
        return sum(self.seqlens)

    def subset(self, keep):
        """Token indices (T_keep,) of the kept sequences (a host list of sequence ids) and their Packing, built
        on the host (numpy) and copied to the device without a sync."""
        lens_S = np.asarray(self.seqlens, dtype=np.int64)
        starts_S = np.cumsum(lens_S) - lens_S
        keep_K = np.asarray(keep, dtype=np.int64)
        lens_K = lens_S[keep_K]
        sub_starts_K = np.cumsum(lens_K) - lens_K
        # token t of the subset sits at start[seq(t)] + (t - sub_start[seq(t)])
        idx = np.arange(lens_K.sum()) + np.repeat(starts_S[keep_K] - sub_starts_K, lens_K)
        device = self.cu_seqlens.device
        return to_device_async(idx, torch.long, device), Packing.from_seqlens(lens_K.tolist(), device)


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension through fastvit.ops.layer_norm (params: weight, bias)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def reset_parameters(self):
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x):
        return ops.layer_norm(x, self.weight, self.bias, self.eps)


class LayerScale(nn.Module):
    """x * gamma, gamma (D,) initialised to a small constant (1e-5 in Web-DINO)."""

    def __init__(self, dim, init_value):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def reset_parameters(self):
        nn.init.constant_(self.gamma, self.init_value)

    def forward(self, x):
        # x * gamma in x's dtype: under autocast the residual stream stays bf16 (as under FSDP's bf16 parameters
        # and in DINOv2's mixed-precision training) instead of promoting to fp32 through the fp32 gamma, which
        # made every following norm run in fp32, every linear re-cast and the saved activations grow. fp32
        # training is unchanged (gamma is fp32 there).
        return x * self.gamma.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention; qkv fused [3D, D] in q, k, v order; per-image attention when packed.

    The heads a call runs are read from qkv's output width (3 * heads * head_dim), so the same module runs a
    tensor-parallel rank's share of the heads once fastvit.parallel.tp has column-sharded qkv (its rows in
    shard-major order) and row-sharded proj. Tokens are counted on qkv's output too: under sequence parallel x
    is this rank's token shard and qkv gathers the full sequence. `backend` is fastvit.ops.attention's.
    """

    def __init__(self, dim, heads, qkv_bias=True, backend="auto"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"model.attn_backend={backend!r}: choose one of {ATTENTION_BACKENDS}")
        self.heads, self.head_dim, self.backend = heads, dim // heads, backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x, packing=None):
        qkv = self.qkv(x)  # (B, N, 3 H Dh) or (T, 3 H Dh); H = heads / tp under tensor parallelism
        Dh = self.head_dim
        H = qkv.shape[-1] // (3 * Dh)
        if packing is None:
            B, N, _ = qkv.shape
            qkv = qkv.view(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
            o_BHND = ops.attention(qkv[0], qkv[1], qkv[2], backend=self.backend)
            return self.proj(o_BHND.transpose(1, 2).reshape(B, N, H * Dh))
        T = qkv.shape[0]
        q, k, v = qkv.view(T, 3, H, Dh).unbind(1)  # each (T, H, Dh)
        o_THD = ops.attention(
            q,
            k,
            v,
            cu_seqlens=packing.cu_seqlens,
            seqlens=packing.seqlens,
            max_seqlen=packing.max_seqlen,
            backend=self.backend,
        )
        return self.proj(o_THD.reshape(T, H * Dh))


class SwiGLUMlp(nn.Module):
    """w3(silu(a) * b) with [a | b] = w12(x): w12 [2h, D], w3 [D, h] (Web-SSL layout)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.w3(ops.swiglu(self.w12(x)))


class GeluMlp(nn.Module):
    """fc2(gelu(fc1(x))), the timm / Web-MAE MLP (exact erf GELU)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def add_residual_subset(x, branch, keep, scale, packing=None):
    """x + scale * branch(x) on the kept samples only, x unchanged elsewhere (the drop-path subset trick).

    keep: host list of kept sample ids (dense: rows of x (B, N, D); packed: sequences of `packing`).
    branch(x_sub, packing_sub) is computed on the kept samples alone, so dropped samples cost no FLOPs.
    The sum has the promoted dtype of x and the branch, as x + branch would.
    """
    if packing is None:
        idx = to_device_async(keep, torch.long, x.device)
        out = branch(x.index_select(0, idx), None)
        x, out = _promoted(x, out)
        return torch.index_add(x.flatten(1), 0, idx, out.flatten(1), alpha=scale).view_as(x)
    idx, sub = packing.subset(keep)
    out = branch(x.index_select(0, idx), sub)
    x, out = _promoted(x, out)
    return torch.index_add(x, 0, idx, out, alpha=scale)


def _promoted(a, b):
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def sample_keep(n, drop_prob, generator=None):
    """A random subset of max(int(n * (1 - p)), 1) of n samples (sorted host list) and its scale n / n_keep."""
    n_keep = max(int(n * (1.0 - drop_prob)), 1)
    keep = torch.randperm(n, generator=generator)[:n_keep].sort().values.tolist()
    return keep, n / n_keep


class Block(nn.Module):
    """Pre-norm block: x + ls1(attn(norm1(x))), then + ls2(mlp(norm2(x))); drop path by sample subset."""

    def __init__(
        self,
        dim,
        heads,
        mlp_hidden,
        *,
        mlp="swiglu",
        qkv_bias=True,
        layerscale_init=1e-5,
        drop_path=0.0,
        attn_backend="auto",
    ):
        super().__init__()
        self.drop_path = drop_path
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias, attn_backend)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.norm2 = LayerNorm(dim)
        if mlp == "swiglu":
            self.mlp = SwiGLUMlp(dim, mlp_hidden)
        elif mlp == "gelu":
            self.mlp = GeluMlp(dim, mlp_hidden)
        else:
            raise ValueError(f"mlp must be 'swiglu' or 'gelu', got {mlp!r}")
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()

    def attn_branch(self, x, packing=None):
        return self.ls1(self.attn(self.norm1(x), packing))

    def mlp_branch(self, x, packing=None):
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x, packing=None):
        if self.training and self.drop_path > 0.0:
            n = x.shape[0] if packing is None else len(packing.seqlens)
            for branch in (self.attn_branch, self.mlp_branch):
                keep, scale = sample_keep(n, self.drop_path)
                x = add_residual_subset(x, branch, keep, scale, packing)
            return x
        a = self.attn_branch(x, packing)
        y, x = ops.add_layer_norm(a, x, self.norm2.weight, self.norm2.bias, self.norm2.eps)
        return x + self.ls2(self.mlp(y))
