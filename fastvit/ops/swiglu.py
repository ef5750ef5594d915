"""fastvit.ops.swiglu: [..., 2h] -> silu(x[..., :h]) * x[..., h:] (the Web-SSL w12 layout)."""

import torch.nn.functional as F


def swiglu(x, *, backend="auto"):
    """SiLU-gated linear unit on a fused [gate | value] last dimension."""
    if backend not in ("auto", "torch"):
        raise ValueError(f"swiglu backend {backend!r} is not available; choose 'auto' or 'torch'")
    if x.shape[-1] % 2:
        raise ValueError(f"swiglu expects an even last dimension [..., 2h], got {tuple(x.shape)}")
    gate, value = x.chunk(2, dim=-1)
    return F.silu(gate) * value
