"""fastvit.ops.attention: non-causal attention, dense (B, H, N, D) or packed (T, H, D) + cu_seqlens.

Packed inputs carry their lengths twice: cu_seqlens (int32 offsets on the device, what the kernels read) and
seqlens (the same lengths on the host, what the torch backend groups by), so no backend reads a device value.

Custom ops fastvit::attention -> (out, lse) and fastvit::attention_backward -> (dq, dk, dv), with
fakes and autograd. Layouts are the same for every backend: dense outputs and gradients are
(B, H, N, D) views of (B, N, H, D) memory (so out.transpose(1, 2).reshape(B, N, H * D) is free),
packed ones are contiguous (T, H, D); lse is the natural-log log-sum-exp of the scaled scores,
(B, H, N) over (B, N, H) memory or (T, H), or an empty tensor for the backends whose backward
recomputes the forward ("flash_attn", and "torch" off the CPU).
Backends: "triton" (fastvit.kernels.attention), "flash_attn" (when importable), "torch" (SDPA;
packed sequences of equal length are batched into one call, never a T x T mask). "auto" runs "triton" for
fp16 / bf16 CUDA tensors, "torch" for fp32 ones (the Triton kernels take fp16 / bf16 on a GPU) and on a CPU.
Dtypes: q, k, v of different dtypes are promoted to one; out and the gradients have that dtype, lse
is fp32 (fp64 for fp64) and the softmax accumulates in fp32 on every backend. On a CPU the torch
backend computes bf16 / fp16 inputs in fp32 (no fast low-precision matmul there) and rounds once.
The caller's autocast does not reach inside the ops.
"""

import importlib.util

import numpy as np
import torch
import torch.nn.functional as F

from fastvit.host_copy import to_device_async
from fastvit.ops import backend as backend_lib


def _flash_attn_usable(device):
    return device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None


REGISTRATION = backend_lib.Registration(
    ops=("attention",),
    kernels=("attention",),
    backends=("auto", "triton", "flash_attn", "torch"),
    bench="attention",
    external={"flash_attn": _flash_attn_usable},
)
BACKENDS = REGISTRATION.backends  # the names model.attn_backend accepts


def _resolve(backend, q):
    if backend == "auto" and q.device.type == "cuda" and q.dtype == torch.float32:
        # The Triton kernels take fp16 / bf16 on a GPU: fp32 tl.dot lowers to FMAs that spill in every tile
        # (kernels/attention.py), so fp32 runs through SDPA there.
        return "torch"
    be = REGISTRATION.resolve("attention", backend, q)
    if be == "flash_attn" and q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"attention backend 'flash_attn' needs fp16 or bf16 inputs, got {q.dtype}")
    return be


def _saves_lse(backend, device):
    return backend == "triton" or (backend == "torch" and device.type == "cpu")


# ---- layouts shared by every backend (and by the fakes) -------------------------------------------


def _empty_out(q, packed):
    if packed:
        return q.new_empty(q.shape)
    B, H, N, D = q.shape
    return q.new_empty((B, N, H, D)).transpose(1, 2)


def _empty_lse(q, packed, backend):
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if not _saves_lse(backend, q.device):
        return q.new_empty((0,), dtype=dtype)
    if packed:
        return q.new_empty(q.shape[:2], dtype=dtype)
    B, H, N, _ = q.shape
    return q.new_empty((B, N, H), dtype=dtype).permute(0, 2, 1)


def _conform(t, like):
    """t with the strides of `like` (no copy when they already agree)."""
    return t if t.stride() == like.stride() else like.copy_(t)


# ---- torch backend ---------------------------------------------------------------------------------


def _dense_torch(q, k, v, scale):
    """(B, H, N, D) -> (out, lse); lse is None off the CPU (SDPA does not return it there)."""
    if q.device.type == "cpu":
        dt = backend_lib.compute_dtype(q)
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q.to(dt), k.to(dt), v.to(dt), scale=scale)
        return o.to(q.dtype), lse
    return F.scaled_dot_product_attention(q, k, v, scale=scale), None


def _groups(seqlens):
    """[(n, starts)] for each distinct sequence length n > 0 of the packed batch, from the host lengths."""
    by_len, start = {}, 0
    for n in seqlens:
        if n > 0:
            by_len.setdefault(n, []).append(start)
        start += n
    return sorted(by_len.items())


def _row_index(starts, n, device):
    """(S_n, n) token indices of the sequences at `starts` (host ints), copied to the device without a sync."""
    return to_device_async(np.asarray(starts, dtype=np.int64)[:, None] + np.arange(n), torch.int64, device)


def _rows(t, n, starts):
    """Token rows of the sequences starting at `starts` (all of length n) -> (S_n, n, ...): a view when
    they are back to back (the multi-crop packing), else a gather."""
    a = starts[0]
    if starts == list(range(a, a + n * len(starts), n)):
        return t[a : a + n * len(starts)].unflatten(0, (len(starts), n))
    return t[_row_index(starts, n, t.device)]


def _put(dst, n, starts, src):
    """dst rows of the sequences at `starts` <- src (S_n, n, ...)."""
    a = starts[0]
    if starts == list(range(a, a + n * len(starts), n)):
        dst[a : a + n * len(starts)].unflatten(0, (len(starts), n)).copy_(src)
    else:
        dst[_row_index(starts, n, dst.device)] = src


def _packed_torch(q, k, v, seqlens, scale, out, lse):
    """Packed (T, H, D) attention with one SDPA call per distinct sequence length; fills out and lse."""
    for n, starts in _groups(seqlens):
        q_g, k_g, v_g = (_rows(t, n, starts).transpose(1, 2) for t in (q, k, v))  # (S_n, H, n, D)
        o_g, lse_g = _dense_torch(q_g, k_g, v_g, scale)
        _put(out, n, starts, o_g.transpose(1, 2))
        if lse.numel():
            _put(lse, n, starts, lse_g.transpose(1, 2))
    return out, lse


def _forward_torch(q, k, v, seqlens, scale):
    packed = seqlens is not None
    out, lse = _empty_out(q, packed), _empty_lse(q, packed, "torch")
    if packed:
        return _packed_torch(q, k, v, seqlens, scale, out, lse)
    o, lse_BHN = _dense_torch(q, k, v, scale)
    return _conform(o, out), (lse if lse_BHN is None else _conform(lse_BHN, lse))


def _backward_torch_cpu(do, q, k, v, o, lse, seqlens, scale):
    grads = [_empty_out(q, seqlens is not None) for _ in range(3)]  # in the inputs' dtype
    dt = backend_lib.compute_dtype(q)
    do, q, k, v, o = (t.to(dt) for t in (do, q, k, v, o))  # computed in fp32, rounded once
    bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    if seqlens is None:
        return tuple(
            _conform(g.to(e.dtype), e) for g, e in zip(bwd(do, q, k, v, o, lse, 0.0, False, scale=scale), grads)
        )
    for n, starts in _groups(seqlens):
        args = [_rows(t, n, starts).transpose(1, 2) for t in (do, q, k, v, o, lse)]  # (S_n, H, n, ...)
        for g, g_n in zip(grads, bwd(*args[:5], args[5], 0.0, False, scale=scale)):
            _put(g, n, starts, g_n.transpose(1, 2))
    return tuple(grads)


# ---- flash_attn backend -----------------------------------------------------------------------------


def _forward_flash(q, k, v, cu_seqlens, max_seqlen, scale):
    import flash_attn

    if cu_seqlens is None:
        o = flash_attn.flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), softmax_scale=scale)
        return _conform(o.transpose(1, 2), _empty_out(q, False))
    o = flash_attn.flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale)
    return _conform(o, _empty_out(q, True))


def _backward_recompute(do, q, k, v, cu_seqlens, seqlens, max_seqlen, scale, backend):
    """Gradients by re-running the backend's forward under autograd (backends that keep no lse)."""
    with torch.enable_grad():
        q_, k_, v_ = (t.detach().requires_grad_() for t in (q, k, v))
        if backend == "flash_attn":
            o = _forward_flash(q_, k_, v_, cu_seqlens, max_seqlen, scale)
        else:
            o = _forward_torch(q_, k_, v_, seqlens, scale)[0]
        grads = torch.autograd.grad(o, (q_, k_, v_), do)
    return tuple(_conform(g, _empty_out(q, cu_seqlens is not None)) for g in grads)


# ---- the custom ops ---------------------------------------------------------------------------------


@torch.library.custom_op("fastvit::attention", mutates_args=())
@backend_lib.no_autocast
def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    seqlens: list[int] | None,
    max_seqlen: int,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from fastvit.kernels.attention import attention_fwd

        return attention_fwd(q, k, v, scale, cu_seqlens, max_seqlen)
    if backend == "flash_attn":
        return _forward_flash(q, k, v, cu_seqlens, max_seqlen, scale), _empty_lse(q, cu_seqlens is not None, backend)
    return _forward_torch(q, k, v, seqlens, scale)


@_attention.register_fake
def _(q, k, v, cu_seqlens, seqlens, max_seqlen, scale, backend):
    packed = cu_seqlens is not None
    return _empty_out(q, packed), _empty_lse(q, packed, backend)


@torch.library.custom_op("fastvit::attention_backward", mutates_args=())
@backend_lib.no_autocast
def _attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    seqlens: list[int] | None,
    max_seqlen: int,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    do, o = do.to(q.dtype), o.to(q.dtype)  # autograd hands do in the dtype of o already; direct callers may not
    if backend == "triton":
        from fastvit.kernels.attention import attention_bwd

        return attention_bwd(do, q, k, v, o, lse, scale, cu_seqlens, max_seqlen)
    if backend == "torch" and q.device.type == "cpu":
        return _backward_torch_cpu(do, q, k, v, o, lse, seqlens, scale)
    return _backward_recompute(do, q, k, v, cu_seqlens, seqlens, max_seqlen, scale, backend)


@_attention_backward.register_fake
def _(do, q, k, v, o, lse, cu_seqlens, seqlens, max_seqlen, scale, backend):
    return tuple(_empty_out(q, cu_seqlens is not None) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, seqlens, max_seqlen, scale, backend = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
    ctx.args = (seqlens, max_seqlen, scale, backend)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = torch.ops.fastvit.attention_backward(do, q, k, v, o, lse, cu_seqlens, *ctx.args)
    return dq, dk, dv, None, None, None, None, None


_attention.register_autograd(_backward, setup_context=_setup_context)


def attention(q, k, v, *, cu_seqlens=None, seqlens=None, max_seqlen=None, scale=None, backend="auto"):
    """Non-causal softmax attention. The layout is validated here for every backend; the Triton kernels' own
    limits (dtypes, head dims) in kernels/attention.py.

    Dense: q, k, v (B, H, N, D) -> (B, H, N, D). Packed: (T, H, D) with int32 cu_seqlens (S+1,)
    -> (T, H, D), each sequence attending only to itself. seqlens: the S lengths on the host (a sequence of
    ints, e.g. models.layers.Packing.seqlens), which must describe cu_seqlens; max_seqlen (the longest
    sequence) defaults to their max. The torch backend groups sequences by the host lengths; without seqlens
    (or without max_seqlen) they are read from cu_seqlens: a host sync.
    """
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"attention: q, k, v shapes must match, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):  # e.g. bf16 q and k beside an fp32 v: one dtype, as torch would
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if cu_seqlens is None:
        if q.dim() != 4:
            raise ValueError(f"dense attention expects (B, H, N, D) inputs, got q of shape {tuple(q.shape)}")
        max_seqlen = q.shape[2]
    else:
        if q.dim() != 3:
            raise ValueError(f"packed attention expects (T, H, D) inputs, got q of shape {tuple(q.shape)}")
        if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be int32 (S + 1,), got {cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    be = _resolve(backend, q)
    if cu_seqlens is not None:
        if seqlens is not None or be == "torch" or max_seqlen is None:
            seqlens = _host_seqlens(cu_seqlens, seqlens, q.shape[0])
        max_seqlen = max(seqlens, default=0) if max_seqlen is None else max_seqlen
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return torch.ops.fastvit.attention(q, k, v, cu_seqlens, seqlens, int(max_seqlen), scale, be)[0]


def _host_seqlens(cu_seqlens, seqlens, T):
    """The packed lengths as a host list of ints: `seqlens` checked against the layout, or read from cu_seqlens."""
    if seqlens is None:
        bounds = cu_seqlens.tolist()  # the one read of device values: callers with a Packing pass its seqlens
        if bounds[0] != 0 or bounds[-1] != T or any(b < a for a, b in zip(bounds[:-1], bounds[1:])):
            raise ValueError(f"cu_seqlens must rise from 0 to the token count {T}, got {bounds}")
        return [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    seqlens = [int(n) for n in seqlens]
    if len(seqlens) + 1 != cu_seqlens.numel() or min(seqlens, default=0) < 0 or sum(seqlens) != T:
        raise ValueError(
            f"seqlens must be {cu_seqlens.numel() - 1} non-negative lengths (one per cu_seqlens interval) "
            f"summing to the token count {T}, got {len(seqlens)} summing to {sum(seqlens)}"
        )
    return seqlens
