"""The public functional ops. Each picks a backend ("auto", "triton", "torch", ...) per call; each op module that
launches kernels declares them once (REGISTRATION, see fastvit.ops.backend)."""

import torch

from fastvit.ops.attention import attention
from fastvit.ops.backend import registrations
from fastvit.ops.clip_loss import clip_loss
from fastvit.ops.layer_norm import add_layer_norm, layer_norm
from fastvit.ops.mae_loss import mae_loss
from fastvit.ops.prototype_cross_entropy import prototype_cross_entropy
from fastvit.ops.sinkhorn import sinkhorn_knopp
from fastvit.ops.swiglu import swiglu

__all__ = [
    "add_layer_norm",
    "attention",
    "available_backends",
    "clip_loss",
    "layer_norm",
    "mae_loss",
    "prototype_cross_entropy",
    "registrations",
    "sinkhorn_knopp",
    "swiglu",
]


def available_backends() -> dict[str, list[str]]:
    """Backends ("triton", "flash_attn", "apex", "torch", ...) each op can use on this machine's devices."""
    devices = [torch.device("cuda")] * torch.cuda.is_available() + [torch.device("cpu")]
    found = {}
    for reg in registrations():
        backends = list(dict.fromkeys(b for device in devices for b in reg.available(device)))
        found.update({op: backends for op in reg.ops})
    return found
