"""Fused prototype cross-entropy (kernels/prototype_cross_entropy.py via fastvit.ops) against float64.

Forward and the gradients of the student features and prototypes, fp32 and bf16 features under autocast beside
fp32 prototypes, K prime and not a multiple of the kernels' 64 / 32-prototype tiles, 1 to 3,000 rows; both
backends; the custom ops through torch.library.opcheck. The bf16 oracle takes the operands rounded as the op
rounds them (autocast semantics) and computes the rest in float64, so the tolerances are fp32's.
"""

import pytest
import torch
import torch.nn.functional as F
from fastvit.kernels.prototype_cross_entropy import prototype_cross_entropy_ref

from fastvit.ops.prototype_cross_entropy import _bwd_op, _fwd_op, prototype_cross_entropy
from fastvit.ops.prototype_targets import TeacherTargets
from fastvit.ops.sinkhorn import sinkhorn_knopp
from fastvit.testing import assert_close

BACKENDS = ["triton", "torch"]
# (S student crops, T target crops, B rows, K prototypes, D)
SHAPES = [(3, 2, 5, 101, 16), (1, 1, 1, 67, 8), (10, 2, 2, 131, 24), (1, 1, 3000, 37, 8)]


def unit(*shape, scale=1.0):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1) * scale


def problem(S, T, B, K, D):
    torch.manual_seed(S * 1000 + B + K)
    xs, ws = unit(S, B, D), unit(K, D, scale=1.5)  # prototypes of norm g = 1.5 (trained norms)
    xt, wt = unit(T, B, D), unit(K, D, scale=1.5)
    targets = sinkhorn_knopp(xt.float(), wt.float(), 0.05, 3, backend="torch")
    return xs, ws, targets, torch.rand(B, dtype=torch.float64), torch.randn(S, T, dtype=torch.float64)


def oracle(xs, ws, targets, row_w, g):
    """Loss [S, T] and grads of xs, ws in float64 on the given operands (materialised logits)."""
    xs, ws = xs.double().requires_grad_(), ws.double().requires_grad_()
    t = targets
    L = prototype_cross_entropy_ref(
        xs, ws, t.features.double(), t.prototypes.double(), t.a, t.b, 0.1, t.inv_temp, row_w
    )
    (L * g).sum().backward()
    return L.detach(), xs.grad, ws.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("S,T,B,K,D", SHAPES)
def test_fp32_matches_float64(backend, S, T, B, K, D):
    xs, ws, targets, row_w, g = problem(S, T, B, K, D)
    a, w = xs.float().requires_grad_(), ws.float().requires_grad_()
    L = prototype_cross_entropy(a, w, targets, 0.1, row_w.float(), chunk=50, backend=backend)
    (L * g.float()).sum().backward()
    L64, gx64, gw64 = oracle(xs.float(), ws.float(), targets, row_w.float(), g.float())
    assert L.shape == (S, T) and L.dtype == torch.float32
    scale = max(1.0, L64.abs().max().item())
    assert_close(L, L64, atol=2e-6 * scale, rtol=1e-5, name=f"loss {backend}")
    assert_close(a.grad, gx64, atol=1e-5 * gx64.abs().max().item(), rtol=1e-4, name=f"grad features {backend}")
    assert_close(w.grad, gw64, atol=1e-5 * gw64.abs().max().item(), rtol=1e-4, name=f"grad prototypes {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("S,T,B,K,D", SHAPES[:2] + SHAPES[3:])
def test_bf16_autocast_features_beside_fp32_prototypes(backend, S, T, B, K, D):
    xs, ws, targets, row_w, g = problem(S, T, B, K, D)
    targets = TeacherTargets(targets.features.bfloat16(), targets.prototypes, targets.inv_temp, targets.a, targets.b)
    a, w = xs.bfloat16().requires_grad_(), ws.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        L = prototype_cross_entropy(a, w, targets, 0.1, row_w.float(), backend=backend)
    (L * g.float()).sum().backward()
    assert L.dtype == torch.float32 and a.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    rounded = TeacherTargets(
        targets.features, targets.prototypes.bfloat16(), targets.inv_temp, targets.a, targets.b
    )  # the op rounds the teacher prototypes to its bf16 features, as autocast does
    L64, gx64, gw64 = oracle(a.detach(), w.detach().bfloat16(), rounded, row_w.float(), g.float())
    assert_close(L, L64, atol=2e-6 * max(1.0, L64.abs().max().item()), rtol=1e-5, name=f"bf16 loss {backend}")
    # both gradients pass through one bf16 rounding (the prototypes' as autocast's matmul rounds a weight's)
    assert_close(a.grad, gx64, atol=1e-2 * gx64.abs().max().item(), rtol=1e-2, name=f"bf16 grad features {backend}")
    assert_close(w.grad, gw64, atol=1e-2 * gw64.abs().max().item(), rtol=1e-2, name=f"bf16 grad prototypes {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_operands_under_autocast_round_as_a_matmul_would(backend):
    """The head's normalize hands fp32 features to the loss under bf16 autocast: the op rounds them (and the
    prototypes, student and teacher) to bf16 as autocast's matmul does, so a GPU runs the low-precision kernels."""
    S, T, B, K, D = SHAPES[0]
    xs, ws, _, row_w, g = problem(S, T, B, K, D)
    xt, wt = unit(T, B, D).float(), unit(K, D, scale=1.5).float()
    a, w = xs.float().requires_grad_(), ws.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        targets = sinkhorn_knopp(xt, wt, 0.05, 3, backend=backend)
        L = prototype_cross_entropy(a, w, targets, 0.1, row_w.float(), backend=backend)
    (L * g.float()).sum().backward()
    assert targets.features.dtype == targets.prototypes.dtype == torch.bfloat16
    assert a.grad.dtype == w.grad.dtype == torch.float32
    bf = sinkhorn_knopp(xt.bfloat16(), wt.bfloat16(), 0.05, 3, backend="torch")
    assert_close(targets.b, bf.b, atol=1e-5, rtol=1e-5, name=f"targets under autocast {backend}")
    L64, gx64, gw64 = oracle(xs.bfloat16(), ws.bfloat16(), bf, row_w.float(), g.float())
    assert_close(L, L64, atol=2e-6 * max(1.0, L64.abs().max().item()), rtol=1e-5, name=f"loss {backend}")
    # the gradients come back through the bf16 operands: one bf16 rounding each, then fp32
    assert_close(a.grad, gx64, atol=1e-2 * gx64.abs().max().item(), rtol=1e-2, name=f"grad features {backend}")
    assert_close(w.grad, gw64, atol=1e-2 * gw64.abs().max().item(), rtol=1e-2, name=f"grad prototypes {backend}")
    exact = prototype_cross_entropy(xs.float(), ws.float(), sinkhorn_knopp(xt, wt, 0.05, 3), 0.1, row_w.float())
    assert (exact - L).abs().max() > 1e-4  # without autocast nothing is rounded: the test sees the rounding


def test_backends_agree_on_large_logits():
    """Teacher logits of magnitude 12 at T = 0.04 and student logits of 12 / 0.1: both backends, one answer."""
    torch.manual_seed(2)
    xs, ws, xt, wt = unit(2, 9, 16), unit(139, 16, scale=12.0), unit(2, 9, 16), unit(139, 16, scale=12.0)
    targets = sinkhorn_knopp(xt.float(), wt.float(), 0.04, 3, backend="torch")
    out = {}
    for backend in BACKENDS:
        a, w = xs.float().requires_grad_(), ws.float().requires_grad_()
        L = prototype_cross_entropy(a, w, targets, 0.1, backend=backend)
        L.sum().backward()
        out[backend] = (L, a.grad, w.grad)
    L64, gx64, gw64 = oracle(xs.float(), ws.float(), targets, torch.full((9,), 1 / 9), torch.ones(2, 2))
    for backend, (L, gx, gw) in out.items():
        assert torch.isfinite(L).all()
        assert_close(L, L64, atol=1e-5 * L64.abs().max().item(), rtol=1e-5, name=f"loss {backend}")
        assert_close(gx, gx64, atol=1e-5 * gx64.abs().max().item(), rtol=1e-4, name=f"grad x {backend}")
        assert_close(gw, gw64, atol=1e-5 * gw64.abs().max().item(), rtol=1e-4, name=f"grad w {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    xs, ws, targets, row_w, g = problem(2, 2, 3, 71, 8)
    t = targets
    args = (xs.float().requires_grad_(), ws.float().requires_grad_(), t.features, t.prototypes, t.a, t.b)
    args = (*args, row_w.float(), t.inv_temp, 0.1, 32, backend)
    # the interpreter runs each kernel call in seconds: aot_dispatch (a dozen more calls) on the torch backend only
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    utils += ("test_aot_dispatch_dynamic",) if backend == "torch" else ()
    torch.library.opcheck(_fwd_op, args, test_utils=utils)
    _, lse, psum = _fwd_op(*args)
    bwd_args = (g.float(), *(x.detach() for x in args[:7]), lse, psum, t.inv_temp, 0.1, 32, backend)
    torch.library.opcheck(_bwd_op, bwd_args, test_utils=utils)


def test_auto_is_torch_on_cpu_and_errors():
    xs, ws, targets, row_w, _ = problem(1, 1, 4, 40, 8)
    auto = prototype_cross_entropy(xs.float(), ws.float(), targets, 0.1, backend="auto")
    torch_ = prototype_cross_entropy(xs.float(), ws.float(), targets, 0.1, backend="torch", chunk=8192)
    assert torch.equal(auto, torch_)
    with pytest.raises(ValueError, match="backend must be one of"):
        prototype_cross_entropy(xs.float(), ws.float(), targets, 0.1, backend="cuda")
    with pytest.raises(ValueError, match="B = 3"):
        prototype_cross_entropy(xs[:, :3].float(), ws.float(), targets, 0.1)
    with pytest.raises(ValueError, match="widths up to 512"):
        big = sinkhorn_knopp(unit(1, 2, 520).float(), unit(5, 520).float(), 0.1, backend="torch")
        prototype_cross_entropy(unit(1, 2, 520).float(), unit(5, 520).float(), big, 0.1, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_realistic_sizes_match_torch_backend(dtype):
    """K = 131,072 prototypes, 10 student crops x 32 rows (DINO, D = 384) and 2,400 masked patches (iBOT, D = 256):
    the fused kernels (Sinkhorn passes and cross-entropy) against the chunked torch backend on the same GPU."""
    torch.manual_seed(0)
    dev = "cuda"
    unit = lambda *s, scale=1.0: (F.normalize(torch.randn(*s, device=dev), dim=-1) * scale).to(dtype)
    for S, T, B, D in ((10, 2, 32, 384), (1, 1, 2400, 256)):
        xs, ws, xt, wt = unit(S, B, D), unit(131072, D, scale=2.0), unit(T, B, D), unit(131072, D, scale=2.0)
        out = {}
        for backend in BACKENDS:
            targets = sinkhorn_knopp(xt, wt, 0.04, 3, backend=backend)
            a, w = xs.clone().requires_grad_(), ws.float().requires_grad_()
            L = prototype_cross_entropy(a, w, targets, 0.1, backend=backend)
            L.sum().backward()
            out[backend] = (targets.a, targets.b, L, a.grad.float(), w.grad)
        for name, x, y in zip(("a", "b", "loss", "grad x", "grad w"), out["triton"], out["torch"]):
            assert_close(x, y, atol=1e-4 * y.abs().max().item() + 1e-6, rtol=1e-3, name=f"{name} S={S} {dtype}")
