"""fastvit.ops.layer_norm and add_layer_norm (pre-norm residual fusion).

Custom ops fastvit::layer_norm -> (y, mean, rstd), fastvit::add_layer_norm -> (y, s, mean, rstd)
and fastvit::layer_norm_backward, with fakes and autograd. The per-row statistics are (M,) in
fp32 (fp64 for fp64 inputs) whatever the backend, so the backward can use any backend's forward.
Backends: "triton" (fastvit.kernels.layer_norm), "apex" (FusedLayerNorm, when importable), "torch".
"""

import importlib.util

import torch

from fastvit.ops import backend as backend_lib

BACKENDS = ("auto", "triton", "apex", "torch")


def triton_usable(device):
    try:  # a plain import (not importlib) so torch.compile can trace it
        from fastvit.kernels import layer_norm as kernels
    except ImportError:
        kernels = None
    return backend_lib.triton_runs(kernels, device)


def apex_usable(device):
    return device.type == "cuda" and importlib.util.find_spec("apex") is not None and _apex() is not None


def _apex():
    try:
        import fused_layer_norm_cuda  # apex's extension behind FusedLayerNorm
    except ImportError:
        return None
    return fused_layer_norm_cuda


def available(device):
    """Backends (besides "auto") usable for tensors on `device`."""
    return ["triton"] * triton_usable(device) + ["apex"] * apex_usable(device) + ["torch"]


def _resolve(backend, x):
    return backend_lib.resolve("layer_norm", backend, x, BACKENDS, available(x.device))


def _stat_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fwd(x, weight, bias, eps, backend, residual=None):
    """Returns (y, s or None, mean_M, rstd_M)."""
    if backend == "triton":
        from fastvit.kernels.layer_norm import layer_norm_fwd

        return layer_norm_fwd(x, weight, bias, eps, residual)
    s = x if residual is None else x + residual
    n = s.shape[-1]
    if backend == "apex":
        y, mean, rstd = _apex().forward_affine(s.contiguous(), (n,), weight, bias, eps)
    else:
        y, mean, rstd = torch.native_layer_norm(s, (n,), weight, bias, eps)
    stat = _stat_dtype(x)
    return y, (None if residual is None else s), mean.reshape(-1).to(stat), rstd.reshape(-1).to(stat)


@torch.library.custom_op("fastvit::layer_norm", mutates_args=())
def _layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, _, mean, rstd = _fwd(x, weight, bias, eps, backend)
    return y, mean, rstd


@_layer_norm.register_fake
def _(x, weight, bias, eps, backend):
    m = x.numel() // x.shape[-1]
    return x.new_empty(x.shape), x.new_empty(m, dtype=_stat_dtype(x)), x.new_empty(m, dtype=_stat_dtype(x))


@torch.library.custom_op("fastvit::add_layer_norm", mutates_args=())
def _add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd(x, weight, bias, eps, backend, residual)


@_add_layer_norm.register_fake
def _(x, residual, weight, bias, eps, backend):
    m = x.numel() // x.shape[-1]
    stats = [x.new_empty(m, dtype=_stat_dtype(x)) for _ in range(2)]
    return x.new_empty(x.shape), x.new_empty(x.shape), *stats


def _apex_backward(dy, mean, rstd, x, n, weight, bias):
    try:  # apex >= 22.x: (..., eps, memory_efficient); eps is unused when the input (not output) is passed
        return _apex().backward_affine(dy, mean, rstd, x, (n,), weight, bias, 0.0, False)
    except TypeError:
        return _apex().backward_affine(dy, mean, rstd, x, (n,), weight, bias, 0.0)


@torch.library.custom_op("fastvit::layer_norm_backward", mutates_args=())
def _layer_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dres: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) of y = layer_norm(x); dres, the gradient reaching x directly, is added to dx."""
    if backend == "triton":
        from fastvit.kernels.layer_norm import layer_norm_bwd

        return layer_norm_bwd(dy, x, weight, mean, rstd, dres)
    n = x.shape[-1]
    if backend == "apex":
        dx, dw, db = _apex_backward(dy.contiguous(), mean, rstd, x.contiguous(), n, weight, bias)
        dx = dx.view(x.shape)
    else:
        stat_shape = (*x.shape[:-1], 1)
        mean, rstd = (t.view(stat_shape).to(x.dtype if x.device.type == "cpu" else t.dtype) for t in (mean, rstd))
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(dy, x, (n,), mean, rstd, weight, bias, [True] * 3)
    return (dx if dres is None else dx + dres), dw, db


@_layer_norm_backward.register_fake
def _(dy, x, weight, bias, mean, rstd, dres, backend):
    return x.new_empty(x.shape), torch.empty_like(weight), torch.empty_like(bias)


def _setup_ln(ctx, inputs, output):
    x, weight, bias, eps, backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.backend = backend


def _backward_ln(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.fastvit.layer_norm_backward(dy, x, weight, bias, mean, rstd, None, ctx.backend)
    return dx, dw, db, None, None


def _setup_add_ln(ctx, inputs, output):
    x, residual, weight, bias, eps, backend = inputs
    _, s, mean, rstd = output
    ctx.save_for_backward(s, weight, bias, mean, rstd)
    ctx.backend = backend


def _backward_add_ln(ctx, dy, ds, _dmean, _drstd):
    s, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.fastvit.layer_norm_backward(dy, s, weight, bias, mean, rstd, ds, ctx.backend)
    return dx, dx, dw, db, None, None


_layer_norm.register_autograd(_backward_ln, setup_context=_setup_ln)
_add_layer_norm.register_autograd(_backward_add_ln, setup_context=_setup_add_ln)


def _check(x, weight, bias):
    if x.dim() == 0 or tuple(weight.shape) != (x.shape[-1],) or tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(
            f"layer_norm: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} must be (N,) "
            f"with N the last dimension of x {tuple(x.shape)}"
        )


def layer_norm(x, weight, bias, eps=1e-6, *, backend="auto"):
    """LayerNorm over the last dimension: (..., N) -> (..., N)."""
    _check(x, weight, bias)
    return torch.ops.fastvit.layer_norm(x, weight, bias, eps, _resolve(backend, x))[0]


def add_layer_norm(x, residual, weight, bias, eps=1e-6, *, backend="auto"):
    """Returns (layer_norm(x + residual), x + residual), the pre-norm block's fused residual step."""
    _check(x, weight, bias)
    if residual.shape != x.shape:
        raise ValueError(f"add_layer_norm: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    y, s, _, _ = torch.ops.fastvit.add_layer_norm(x, residual, weight, bias, eps, _resolve(backend, x))
    return y, s
