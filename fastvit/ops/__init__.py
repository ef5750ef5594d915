"""The public functional ops. Each picks a backend ("auto", "triton", "torch", ...) per call."""

import importlib

import torch

from fastvit.ops.attention import attention
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
    "sinkhorn_knopp",
    "swiglu",
]

# op name -> module exposing available(device) -> list[str] (the concrete backends for that device)
BACKEND_MODULES = {
    "attention": "fastvit.ops.attention",
    "layer_norm": "fastvit.ops.layer_norm",
    "add_layer_norm": "fastvit.ops.layer_norm",
    "swiglu": "fastvit.ops.swiglu",
    "mae_loss": "fastvit.ops.mae_loss",
    "clip_loss": "fastvit.ops.clip_loss",
    "prototype_cross_entropy": "fastvit.ops.prototype_cross_entropy",
    "sinkhorn_knopp": "fastvit.ops.sinkhorn",
}


def available_backends() -> dict[str, list[str]]:
    """Backends ("triton", "flash_attn", "apex", "torch", ...) each op can use on this machine's devices."""
    devices = [torch.device("cuda")] * torch.cuda.is_available() + [torch.device("cpu")]
    found = {}
    for op, module in BACKEND_MODULES.items():
        available = importlib.import_module(module).available
        found[op] = list(dict.fromkeys(b for device in devices for b in available(device)))
    return found
