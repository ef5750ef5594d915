"""fastvit.ops.layer_norm / add_layer_norm (Triton through the interpreter on a CPU) against float64."""

import pytest
import torch
from fastvit.kernels.layer_norm import add_layer_norm_ref, layer_norm_ref
from kernel_tolerance import kernel_tol

from fastvit.ops import add_layer_norm, layer_norm
from fastvit.testing import assert_close

EPS = 1e-6


def _ref_outputs(x, residual, weight, bias, dy, ds):
    """[y, s, dx, dresidual, dweight, dbias] of add_layer_norm (y only through layer_norm if residual is None)."""
    leaves = [t.detach().requires_grad_() for t in (x, residual, weight, bias) if t is not None]
    if residual is None:
        y, s = layer_norm_ref(leaves[0], *leaves[1:], EPS), leaves[0]
        loss = (y * dy).sum()
    else:
        y, s = add_layer_norm_ref(*leaves, EPS)
        loss = (y * dy).sum() + (s * ds).sum()
    return [y, s, *torch.autograd.grad(loss, leaves)]


def _inputs(shape, with_residual):
    n = shape[-1]
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    residual = torch.randn(shape, dtype=torch.float64) if with_residual else None
    weight = 1 + 0.1 * torch.randn(n, dtype=torch.float64)
    bias = 0.1 * torch.randn(n, dtype=torch.float64)
    return x, residual, weight, bias, torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 1023), (5, 1536)])
def test_layer_norm_fwd_bwd(dtype, with_residual, shape):
    x, residual, weight, bias, dy, ds = _inputs(shape, with_residual)
    expected = _ref_outputs(x, residual, weight, bias, dy, ds)
    leaves = [t.to(dtype).requires_grad_() for t in (x, residual, weight, bias) if t is not None]
    if with_residual:
        y, s = add_layer_norm(*leaves, EPS, backend="triton")
        loss = (y * dy.to(dtype)).sum() + (s * ds.to(dtype)).sum()
    else:
        y, s = layer_norm(*leaves, EPS, backend="triton"), leaves[0]
        loss = (y * dy.to(dtype)).sum()
    actual = [y, s, *torch.autograd.grad(loss.float(), leaves)]
    names = ["y", "s", "dx", "dresidual", "dweight", "dbias"] if with_residual else ["y", "s", "dx", "dweight", "dbias"]
    for i, (name, a, e) in enumerate(zip(names, actual, expected)):
        tol = kernel_tol(lambda *t, i=i: _ref_outputs(*t)[i], [x, residual, weight, bias, dy, ds], dtype)
        assert_close(a, e, atol=tol, name=f"{name} ({dtype})")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layer_norm_backends_agree_on_strided_rows(backend):
    x = torch.randn(6, 2, 257)[:, 0]  # rows with a stride of 2 * 257
    w, b = torch.randn(257), torch.randn(257)
    assert_close(
        layer_norm(x, w, b, backend=backend),
        layer_norm_ref(x.double(), w.double(), b.double(), EPS),
        atol=2e-5,
        name=backend,
    )


def test_layer_norm_errors():
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        layer_norm(x, torch.ones(7), torch.zeros(8))
    with pytest.raises(ValueError, match="residual shape"):
        add_layer_norm(x, torch.randn(3, 9), torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match="backend"):
        layer_norm(x, torch.ones(8), torch.zeros(8), backend="fast")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm_autocast_mix(dtype, backend, with_residual):
    """What autocast hands a pre-norm block: x low precision (a Linear's output), the residual stream, weight
    and bias fp32; forward and backward inside the autocast region. y and s take the promoted dtype, each
    gradient the dtype of its input, and all of them stay within 2x (4x: interpreter bf16) torch's own error."""
    x, residual, weight, bias, dy, ds = _inputs((3, 37, 257), with_residual)
    expected = _ref_outputs(x, residual, weight, bias, dy, ds)
    leaves = [x.to(dtype)] + [t.float() for t in (residual, weight, bias) if t is not None]
    leaves = [t.requires_grad_() for t in leaves]
    with torch.autocast("cpu", dtype=dtype):
        if with_residual:
            y, s = add_layer_norm(*leaves, EPS, backend=backend)
            loss = (y * dy.to(y.dtype)).sum() + (s * ds.to(s.dtype)).sum()
        else:
            y, s = layer_norm(*leaves, EPS, backend=backend), leaves[0]
            loss = (y * dy.to(y.dtype)).sum()
        grads = torch.autograd.grad(loss, leaves)
    out_dtype = torch.float32 if with_residual else dtype
    assert y.dtype == s.dtype == out_dtype, (y.dtype, s.dtype)
    assert [g.dtype for g in grads] == [t.dtype for t in leaves]
    names = ["y", "s", "dx", "dresidual", "dweight", "dbias"] if with_residual else ["y", "s", "dx", "dweight", "dbias"]
    for i, (name, a, e) in enumerate(zip(names, [y, s, *grads], expected)):
        tol = kernel_tol(lambda *t, i=i: _ref_outputs(*t)[i], [x, residual, weight, bias, dy, ds], dtype)
        assert_close(a, e, atol=tol, name=f"{backend} {name} ({dtype} x, fp32 weights)")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layer_norm_backward_takes_other_gradient_dtypes(backend):
    """layer_norm_backward called directly with an fp32 dy and dres beside a bf16 x: dx stays bf16 and
    matches the all-fp32 backward on the same values to bf16 rounding."""
    x = torch.randn(5, 80).bfloat16()
    w, b = 1 + 0.1 * torch.randn(80), 0.1 * torch.randn(80)
    _, mean, rstd = torch.ops.fastvit.layer_norm(x, w, b, EPS, backend)
    dy, dres = torch.randn(5, 80), torch.randn(5, 80)
    dx, dw, db = torch.ops.fastvit.layer_norm_backward(dy, x, w, b, mean, rstd, dres, backend)
    ref = torch.ops.fastvit.layer_norm_backward(dy, x.float(), w, b, mean, rstd, dres, "torch")
    assert (dx.dtype, dw.dtype, db.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    for name, a, e, tol in zip(["dx", "dw", "db"], [dx, dw, db], ref, [2 * 2**-8 * ref[0].abs().max(), 1e-4, 1e-4]):
        assert_close(a, e, atol=float(tol), name=f"{backend} {name}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layer_norm_fakes_follow_the_autocast_mix(backend):
    """torch.library.opcheck (fake vs real dtypes and shapes, autograd, AOT dispatch) on the mixed dtypes:
    bf16 x beside an fp32 residual, weight and bias."""
    x = torch.randn(4, 37).bfloat16().requires_grad_()
    r, w, b = (torch.randn(*s, requires_grad=True) for s in ((4, 37), (37,), (37,)))
    tests = ("test_schema", "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.fastvit.layer_norm.default, (x, w, b, EPS, backend), test_utils=tests)
    torch.library.opcheck(torch.ops.fastvit.add_layer_norm.default, (x, r, w, b, EPS, backend), test_utils=tests)
