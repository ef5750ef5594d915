"""The public functional ops. Each picks a backend ("auto", "triton", "torch", ...) per call."""

from fastvit.ops.attention import attention
from fastvit.ops.layer_norm import add_layer_norm, layer_norm
from fastvit.ops.swiglu import swiglu

__all__ = ["attention", "layer_norm", "add_layer_norm", "swiglu"]
