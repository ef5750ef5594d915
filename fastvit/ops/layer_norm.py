"""fastvit.ops.layer_norm and add_layer_norm (pre-norm residual fusion).

Custom ops fastvit::layer_norm -> (y, mean, rstd), fastvit::add_layer_norm -> (y, s, mean, rstd)
and fastvit::layer_norm_backward, with fakes and autograd. The per-row statistics are (M,) in
fp32 (fp64 for fp64 inputs) whatever the backend, so the backward can use any backend's forward.
Dtypes follow the unfused torch composition under autocast: s = x + residual in their promoted
dtype (a bf16 branch added to an fp32 residual stream stays fp32), y in the dtype of s, weight and
bias in their own dtype (fp32 beside bf16 / fp16 activations); every gradient has the dtype of its
input. The statistics and the weight and bias gradients are reduced in fp32.
Backends: "triton" (fastvit.kernels.layer_norm), "apex" (FusedLayerNorm, when importable), "torch".
"""

import importlib.util

import torch

from fastvit.ops import backend as backend_lib


def _apex():
    try:
        import fused_layer_norm_cuda  # apex's extension behind FusedLayerNorm
    except ImportError:
        return None
    return fused_layer_norm_cuda


def _apex_usable(device):
    return device.type == "cuda" and importlib.util.find_spec("apex") is not None and _apex() is not None


REGISTRATION = backend_lib.Registration(
    ops=("layer_norm", "add_layer_norm"),
    kernels=("layer_norm",),
    backends=("auto", "triton", "apex", "torch"),
    bench="layer_norm",
    external={"apex": _apex_usable},
)


def _resolve(backend, x):
    if backend == "auto" and x.device.type == "cuda":
        from fastvit.kernels.layer_norm import MAX_WIDTH

        if x.shape[-1] > MAX_WIDTH:
            return "torch"  # the Triton kernels keep a whole row in registers: wider rows would spill
    return REGISTRATION.resolve("layer_norm", backend, x)


def _stat_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _sum_dtype(x, residual):
    return x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)


def _fwd(x, weight, bias, eps, backend, residual=None):
    """Returns (y, s or None, mean_M, rstd_M)."""
    if backend == "triton":
        from fastvit.kernels.layer_norm import layer_norm_fwd

        return layer_norm_fwd(x, weight, bias, eps, residual)
    s = x if residual is None else x + residual  # the promoted dtype, summed in the wider of the two
    n = s.shape[-1]
    stat = _stat_dtype(s)
    if backend == "apex":  # one dtype throughout (fp32 statistics inside apex): the (N,) parameters follow s
        y, mean, rstd = _apex().forward_affine(s.contiguous(), (n,), weight.to(s.dtype), bias.to(s.dtype), eps)
    else:  # in fp32 (fp64 for fp64), rounded once: a CPU has no fast bf16 arithmetic
        y, mean, rstd = torch.native_layer_norm(s.to(stat), (n,), weight.to(stat), bias.to(stat), eps)
    y = y.to(s.dtype)
    return y, (None if residual is None else s), mean.reshape(-1).to(stat), rstd.reshape(-1).to(stat)


@torch.library.custom_op("fastvit::layer_norm", mutates_args=())
@backend_lib.no_autocast
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
@backend_lib.no_autocast
def _add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd(x, weight, bias, eps, backend, residual)


@_add_layer_norm.register_fake
def _(x, residual, weight, bias, eps, backend):
    m = x.numel() // x.shape[-1]
    dtype = _sum_dtype(x, residual)
    stats = [x.new_empty(m, dtype=torch.float64 if dtype == torch.float64 else torch.float32) for _ in range(2)]
    return x.new_empty(x.shape, dtype=dtype), x.new_empty(x.shape, dtype=dtype), *stats


def _apex_backward(dy, mean, rstd, x, n, weight, bias):
    try:  # apex >= 22.x: (..., eps, memory_efficient); eps is unused when the input (not output) is passed
        return _apex().backward_affine(dy, mean, rstd, x, (n,), weight, bias, 0.0, False)
    except TypeError:
        return _apex().backward_affine(dy, mean, rstd, x, (n,), weight, bias, 0.0)


@torch.library.custom_op("fastvit::layer_norm_backward", mutates_args=())
@backend_lib.no_autocast
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
    """(dx, dweight, dbias) of y = layer_norm(x); dres, the gradient reaching x directly, is added to dx.
    dx has the dtype of x, dweight and dbias those of weight and bias; dy and dres may be of any float dtype."""
    if backend == "triton":
        from fastvit.kernels.layer_norm import layer_norm_bwd

        dx, dw, db = layer_norm_bwd(dy, x, weight, mean, rstd, dres)
        return dx, dw, db.to(bias.dtype)
    n = x.shape[-1]
    stat = _stat_dtype(x)
    if backend == "apex":
        dx, dw, db = _apex_backward(
            dy.to(x.dtype).contiguous(), mean, rstd, x.contiguous(), n, weight.to(x.dtype), bias.to(x.dtype)
        )
        dx = dx.view(x.shape).to(stat)
    else:  # in fp32 (fp64 for fp64) from the saved fp32 statistics
        stat_shape = (*x.shape[:-1], 1)
        mean, rstd = (t.view(stat_shape).to(stat) for t in (mean, rstd))
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(
            dy.to(stat), x.to(stat), (n,), mean, rstd, weight.to(stat), bias.to(stat), [True] * 3
        )
    if dres is not None:
        dx = dx + dres
    return dx.to(x.dtype), dw.to(weight.dtype), db.to(bias.dtype)


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
    ctx.dtypes = (x.dtype, residual.dtype)


def _backward_add_ln(ctx, dy, ds, _dmean, _drstd):
    s, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = torch.ops.fastvit.layer_norm_backward(dy, s, weight, bias, mean, rstd, ds, ctx.backend)
    x_dtype, residual_dtype = ctx.dtypes
    return dx.to(x_dtype), dx.to(residual_dtype), dw, db, None, None


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
