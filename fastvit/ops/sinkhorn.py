"""fastvit.ops.sinkhorn_knopp: DINOv2's Sinkhorn-Knopp teacher centering, streamed over prototypes.

The iteration runs on the factored form P = exp(t / temp - shift) * r[k] * c[b] (see kernels/sinkhorn.py):
each half-iteration is one streaming pass (custom ops fastvit::sinkhorn_pass / fastvit::sinkhorn_apply, Triton or
chunked torch) and the per-prototype sums are all-reduced in torch between passes. It is a stop-gradient op
(the teacher side of the loss): the input is detached, and the ops have no autograd formula on purpose.
"""

import torch
import torch.distributed as dist

from fastvit.kernels import sinkhorn as _k
from fastvit.ops import backend as backend_lib

BACKENDS = ("auto", "triton", "torch")
_CHUNK = 8192  # prototypes per step of the torch passes: bounds their fp32 temporaries to [B, 8192]


def available(device):
    """Backends (besides "auto") usable for tensors on `device`."""
    return (["triton"] if backend_lib.triton_runs(_k, device) else []) + ["torch"]


def dist_active(group=None):
    return dist.is_available() and dist.is_initialized()


def all_reduce_(x, op="sum", group=None):
    """In-place all-reduce ("sum" or "max") when torch.distributed is initialised; identity otherwise."""
    if dist_active(group):
        dist.all_reduce(x, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=group)
    return x


def _exp_chunks(t_BK, shift, temp):
    for k0 in range(0, t_BK.shape[1], _CHUNK):
        yield k0, torch.exp(t_BK[:, k0 : k0 + _CHUNK].float() / temp - shift)


@torch.library.custom_op("fastvit::sinkhorn_pass", mutates_args=())
def sinkhorn_pass(
    t: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, temp: float, dim: int, backend: str
) -> torch.Tensor:
    """dim=0: out[k] = sum_b E[b, k] * scale[b]; dim=1: out[b] = sum_k E[b, k] * scale[k]; E = exp(t / temp - shift)."""
    if backend == "triton":
        if dim == 0:
            return _k.sinkhorn_prototype_sums_triton(t, scale, shift, temp)
        return _k.sinkhorn_row_sums_triton(t, scale, shift, temp)
    if dim == 0:
        return torch.cat([scale @ e for _, e in _exp_chunks(t, shift, temp)]) if t.shape[1] else scale.new_zeros(0)
    out = scale.new_zeros(t.shape[0])
    for k0, e in _exp_chunks(t, shift, temp):
        out += e @ scale[k0 : k0 + e.shape[1]]
    return out


@sinkhorn_pass.register_fake
def _(t, scale, shift, temp, dim, backend):
    return t.new_empty(t.shape[1 - dim], dtype=torch.float32)


@torch.library.custom_op("fastvit::sinkhorn_apply", mutates_args=())
def sinkhorn_apply(
    t: torch.Tensor, r: torch.Tensor, c: torch.Tensor, shift: torch.Tensor, temp: float, backend: str
) -> torch.Tensor:
    """P[b, k] = exp(t[b, k] / temp - shift) * r[k] * c[b], fp32."""
    if backend == "triton":
        return _k.sinkhorn_apply_triton(t, r, c, shift, temp)
    out = torch.empty(t.shape, device=t.device, dtype=torch.float32)
    for k0, e in _exp_chunks(t, shift, temp):
        out[:, k0 : k0 + e.shape[1]] = e * r[k0 : k0 + e.shape[1]] * c[:, None]
    return out


@sinkhorn_apply.register_fake
def _(t, r, c, shift, temp, backend):
    return t.new_empty(t.shape, dtype=torch.float32)


def global_row_count(n_local, device, n_rows=None, group=None):
    """B_global: the given n_rows, else the local count all-reduced over ranks (one process: n_local)."""
    if n_rows is not None:
        if n_rows < 1:
            raise ValueError(f"sinkhorn_knopp n_rows must be >= 1, got {n_rows}")
        return int(n_rows)
    if not dist_active(group):
        return int(n_local)
    count = torch.tensor([float(n_local)], device=device)
    return int(all_reduce_(count, "sum", group).item())


def global_shift(z_max, group=None):
    """The all-reduced max of t / temp as a [1] fp32 tensor (finite only if some rank has rows)."""
    return all_reduce_(z_max.float().reshape(1), "max", group)


def check_sinkhorn_args(t_BK, temp, n_iters):
    if t_BK.dim() != 2 or not t_BK.is_floating_point():
        raise ValueError(f"sinkhorn_knopp expects float teacher logits [B, K], got {t_BK.dtype} {tuple(t_BK.shape)}")
    if not temp > 0:
        raise ValueError(f"sinkhorn_knopp needs a positive temperature, got {temp}")
    if n_iters < 1:
        raise ValueError(f"sinkhorn_knopp needs n_iters >= 1, got {n_iters}")


@torch.no_grad()
def sinkhorn_knopp(teacher_logits, temp, n_iters=3, *, n_rows=None, group=None, backend="auto"):
    """Sinkhorn-Knopp targets [B, K] (fp32) for teacher logits [B, K] (DINOv2 semantics, dinov2/loss).

    Prototype sums and the row count are all-reduced over `group` when torch.distributed is initialised.
    n_rows: B_global, e.g. the global masked-patch count for iBOT; default: local rows summed over ranks.
    Each rank calls this even with zero local rows (the collectives must match).
    """
    check_sinkhorn_args(teacher_logits, temp, n_iters)
    be = backend_lib.resolve("sinkhorn_knopp", backend, teacher_logits, BACKENDS, available(teacher_logits.device))
    t = teacher_logits.detach()
    B, K = t.shape
    n_rows = global_row_count(B, t.device, n_rows, group)
    z_max = t.max().float() / temp if t.numel() else torch.tensor(float("-inf"), device=t.device)
    shift = global_shift(z_max, group)
    c = torch.ones(B, device=t.device, dtype=torch.float32)
    for _ in range(n_iters):
        proto = all_reduce_(sinkhorn_pass(t, c, shift, float(temp), 0, be), "sum", group)  # [K]
        r = 1.0 / (proto * K)
        c = 1.0 / (sinkhorn_pass(t, r, shift, float(temp), 1, be) * n_rows)  # [B]
    return sinkhorn_apply(t, r, c * n_rows, shift, float(temp), be)
