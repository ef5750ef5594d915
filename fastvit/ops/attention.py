"""fastvit.ops.attention: non-causal attention, dense (B, H, N, D) or packed (T, H, D) + cu_seqlens."""

import torch
import torch.nn.functional as F


def _packed_torch(q_THD, k_THD, v_THD, cu_seqlens, scale):
    """Packed attention with SDPA: sequences of equal length are batched into one call."""
    bounds = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    out_THD = torch.empty_like(q_THD)
    for n in sorted(set(lengths)):
        starts = [bounds[i] for i, length in enumerate(lengths) if length == n]
        idx = torch.tensor(starts, device=q_THD.device)[:, None] + torch.arange(n, device=q_THD.device)  # (S_n, n)
        q, k, v = (t[idx].transpose(1, 2) for t in (q_THD, k_THD, v_THD))  # (S_n, H, n, D)
        o = F.scaled_dot_product_attention(q, k, v, scale=scale)
        out_THD[idx] = o.transpose(1, 2)
    return out_THD


def attention(q, k, v, *, cu_seqlens=None, max_seqlen=None, scale=None, backend="auto"):
    """Non-causal softmax attention.

    Dense: q, k, v (B, H, N, D) -> (B, H, N, D). Packed: (T, H, D) with int32 cu_seqlens (S+1,)
    -> (T, H, D), each sequence attending only to itself.
    """
    if backend not in ("auto", "torch"):
        raise ValueError(f"attention backend {backend!r} is not available; choose 'auto' or 'torch'")
    if cu_seqlens is None:
        if q.dim() != 4:
            raise ValueError(f"dense attention expects (B, H, N, D) inputs, got q of shape {tuple(q.shape)}")
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if q.dim() != 3:
        raise ValueError(f"packed attention expects (T, H, D) inputs, got q of shape {tuple(q.shape)}")
    return _packed_torch(q, k, v, cu_seqlens, scale)
