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
