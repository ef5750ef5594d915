"""fastvit.ops.layer_norm and add_layer_norm (pre-norm residual fusion)."""

import torch.nn.functional as F


def _check_backend(backend):
    if backend not in ("auto", "torch"):
        raise ValueError(f"layer_norm backend {backend!r} is not available; choose 'auto' or 'torch'")


def layer_norm(x, weight, bias, eps=1e-6, *, backend="auto"):
    """LayerNorm over the last dimension."""
    _check_backend(backend)
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def add_layer_norm(x, residual, weight, bias, eps=1e-6, *, backend="auto"):
    """Returns (layer_norm(x + residual), x + residual)."""
    _check_backend(backend)
    s = x + residual
    return F.layer_norm(s, (s.shape[-1],), weight, bias, eps), s
