"""fastvit.ops.swiglu (Triton through the interpreter on a CPU) against float64."""

import pytest
import torch
from fastvit.kernels.swiglu import swiglu_ref
from kernel_tolerance import kernel_tol

from fastvit.ops import swiglu
from fastvit.testing import assert_close


def _grad_ref(x, dy):
    x = x.detach().requires_grad_()
    return torch.autograd.grad(swiglu_ref(x), x, dy)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape", [(3, 7, 2 * 341), (2, 1536)])
def test_swiglu_fwd_bwd(dtype, backend, shape):
    x64 = torch.randn(shape, dtype=torch.float64)
    dy64 = torch.randn((*shape[:-1], shape[-1] // 2), dtype=torch.float64)
    x = x64.to(dtype).requires_grad_()
    y = swiglu(x, backend=backend)
    (dx,) = torch.autograd.grad(y, x, dy64.to(dtype))
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, swiglu_ref(x64), atol=kernel_tol(swiglu_ref, [x64], dtype), name="y")
    assert_close(dx, _grad_ref(x64, dy64), atol=kernel_tol(_grad_ref, [x64, dy64], dtype), name="dx")


def test_swiglu_strided_input_and_errors():
    x_big = torch.randn(4, 10, 64)
    x = x_big[:, ::2]  # non-contiguous rows
    assert_close(swiglu(x, backend="triton"), swiglu_ref(x), atol=1e-6, name="strided")
    with pytest.raises(ValueError, match="even last dimension"):
        swiglu(torch.randn(3, 5))
    with pytest.raises(ValueError, match="backend"):
        swiglu(x, backend="cuda-magic")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_swiglu_autocast_mix(dtype, backend):
    """Under autocast (forward and backward) on the low-precision w12 output: y and dx keep its dtype and stay
    within 2x (4x: interpreter bf16) torch's own error; an fp32 dy given to the backward op directly is fine."""
    x64, dy64 = torch.randn(5, 37, 2 * 80, dtype=torch.float64), torch.randn(5, 37, 80, dtype=torch.float64)
    x = x64.to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = swiglu(x, backend=backend)
        (dx,) = torch.autograd.grad(y, x, dy64.to(dtype))
        dx_from_fp32_dy = torch.ops.fastvit.swiglu_backward(dy64.float(), x.detach(), backend)
    assert y.dtype == dx.dtype == dx_from_fp32_dy.dtype == dtype
    assert_close(y, swiglu_ref(x64), atol=kernel_tol(swiglu_ref, [x64], dtype), name=f"{backend} y")
    tol = kernel_tol(_grad_ref, [x64, dy64], dtype)
    assert_close(dx, _grad_ref(x64, dy64), atol=tol, name=f"{backend} dx")
    assert_close(dx_from_fp32_dy, _grad_ref(x64, dy64), atol=tol, name=f"{backend} dx (fp32 dy)")
