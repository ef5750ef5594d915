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
