"""torch.library.opcheck on every fastvit custom op of this family, a torch.compile'd block using them, and the
kernel registrations (every kernel declared once, with its backends and its benchmark)."""

import importlib

import pytest
import torch
from fastvit.benchmarks.kernels import benchmarks
from fastvit.kernels import aot
from torch import nn

import fastvit.ops
from fastvit.ops import add_layer_norm, attention, available_backends, layer_norm, registrations, swiglu
from fastvit.testing import assert_close

BACKENDS = ["torch", "triton"]


def _opcheck(op, args):
    torch.library.opcheck(
        op,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_swiglu(backend):
    x = torch.randn(3, 5, 2 * 24, requires_grad=True)
    _opcheck(torch.ops.fastvit.swiglu.default, (x, backend))
    _opcheck(torch.ops.fastvit.swiglu_backward.default, (torch.randn(3, 5, 24), x.detach(), backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_layer_norm(backend):
    x, r = torch.randn(4, 37, requires_grad=True), torch.randn(4, 37, requires_grad=True)
    w, b = torch.randn(37, requires_grad=True), torch.randn(37, requires_grad=True)
    _opcheck(torch.ops.fastvit.layer_norm.default, (x, w, b, 1e-6, backend))
    _opcheck(torch.ops.fastvit.add_layer_norm.default, (x, r, w, b, 1e-6, backend))
    _, mean, rstd = torch.ops.fastvit.layer_norm(x, w, b, 1e-6, backend)
    args = (torch.randn(4, 37), x.detach(), w.detach(), b.detach(), mean.detach(), rstd.detach())
    for dres in (None, torch.randn(4, 37)):
        _opcheck(torch.ops.fastvit.layer_norm_backward.default, (*args, dres, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("packed", [False, True])
def test_opcheck_attention(backend, packed):
    shape, cu, seqlens, max_seqlen = (
        ((21, 2, 16), torch.tensor([0, 13, 21], dtype=torch.int32), [13, 8], 13)
        if packed
        else ((2, 2, 13, 16), None, None, 13)
    )
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    _opcheck(torch.ops.fastvit.attention.default, (q, k, v, cu, seqlens, max_seqlen, 0.25, backend))
    o, lse = torch.ops.fastvit.attention(q, k, v, cu, seqlens, max_seqlen, 0.25, backend)
    args = (torch.randn(shape), q.detach(), k.detach(), v.detach(), o.detach(), lse.detach())
    _opcheck(torch.ops.fastvit.attention_backward.default, (*args, cu, seqlens, max_seqlen, 0.25, backend))


class _Block(nn.Module):
    """A pre-norm block built only from the fastvit ops: dense or packed attention, then a SwiGLU MLP."""

    def __init__(self, dim=32, heads=2, backend="auto"):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.w12, self.w3 = nn.Linear(dim, 4 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x_TD, cu_seqlens, seqlens, max_seqlen):
        T, D = x_TD.shape
        h = layer_norm(x_TD, self.norm1.weight, self.norm1.bias, backend=self.backend)
        q, k, v = self.qkv(h).view(T, 3, self.heads, D // self.heads).unbind(1)
        a = attention(q, k, v, cu_seqlens=cu_seqlens, seqlens=seqlens, max_seqlen=max_seqlen, backend=self.backend)
        h, x_TD = add_layer_norm(
            self.proj(a.reshape(T, D)), x_TD, self.norm2.weight, self.norm2.bias, backend=self.backend
        )
        return x_TD + self.w3(swiglu(self.w12(h), backend=self.backend))


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_compiled_block_matches_eager(backend):
    torch._dynamo.reset()
    block = _Block(backend=backend)
    x = torch.randn(50 + 37, 32)
    cu = torch.tensor([0, 50, 87], dtype=torch.int32)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    outs, grads = [], []
    for model in (block, compiled):
        x_ = x.clone().requires_grad_()
        out = model(x_, cu, (50, 37), 50)
        out.square().sum().backward()
        outs.append(out)
        grads.append([x_.grad, *(p.grad.clone() for p in block.parameters())])
        block.zero_grad()
    assert_close(outs[1], outs[0], atol=1e-5, name="compiled out")
    for g_c, g_e in zip(grads[1], grads[0]):
        assert_close(g_c, g_e, atol=1e-4, name="compiled grad")


def test_available_backends_lists_every_op():
    found = available_backends()
    assert list(found) == [op for reg in registrations() for op in reg.ops]
    for op in ("attention", "layer_norm", "add_layer_norm", "swiglu"):
        assert "torch" in found[op]
    assert "triton" in found["attention"]  # CUDA, or the interpreter the test suite runs under


def test_every_kernel_module_is_registered_once():
    """A kernels/<op>.py with a Triton kernel that no op module's REGISTRATION claims (or two claim) fails here."""
    declared = [k for reg in registrations() for k in reg.kernels]
    assert sorted(declared) == sorted(aot.OPS), f"kernel modules {aot.OPS}, declared {declared}"


@pytest.mark.parametrize("reg", registrations(), ids=lambda reg: "+".join(reg.ops))
def test_registration_is_complete(reg):
    """The declaration names importable kernels, public ops, its backends and a benchmark `bench kernels` runs."""
    for name in reg.kernels:
        module = importlib.import_module(f"fastvit.kernels.{name}")
        assert module.INTERPRETED and module.launch_variants  # tests/conftest.py sets TRITON_INTERPRET=1
    for op in reg.ops:
        assert op in fastvit.ops.__all__ and callable(getattr(fastvit.ops, op))
    assert reg.backends[0] == "auto" and {"triton", "torch"} <= set(reg.backends)
    assert set(reg.external) == set(reg.backends) - {"auto", "triton", "torch"}
    assert reg.available(torch.device("cpu")) == ["triton", "torch"]  # the interpreter runs the kernels here
    assert reg.bench in benchmarks() and set(reg.kernels) <= set(benchmarks()[reg.bench])
    assert callable(importlib.import_module(f"fastvit.benchmarks.{reg.bench}").bench)
