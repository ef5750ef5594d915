"""fastvit.ops.sinkhorn_knopp: DINOv2's Sinkhorn-Knopp teacher centering, in log space, on factored logits.

The teacher logits are t[r, k] = x[r] . W[k] (features [T, B, D] flattened to R rows, prototypes [K, D]) and the
balanced assignment is kept in factored form, P[r, k] = exp(t / temp + a[k] + b[r]) (a TeacherTargets). DINOv2's
iteration (dinov2/loss/dino_clstoken_loss.py: Q = exp(t / temp)^T; Q /= sum(Q); n_iters times: Q /= row sums,
/= K; Q /= column sums, /= B; finally Q *= B) is, in logs, with log c = 0 to start:
    a[k]     = -logsumexp_r(t[r, k] / temp + log c[r]) - log K      (summed over all ranks' rows)
    log c[r] = -logsumexp_k(t[r, k] / temp + a[k]) - log B_global
and b = log c + log B_global. The global sum(Q) cancels in the first row normalisation. Every exponent is taken
after its own running maximum (fastvit::prototype_lse), so no logits can overflow or underflow a row away: a single
global shift (exp(t / temp - max)) loses every row whose logits sit ~88 / temp below the largest.
Across ranks the per-prototype log-sums are combined as max, then sum of exp(. - max): two all-reduces of [K].
"""

import math

import torch
import torch.distributed as dist

from fastvit.ops.prototype_targets import (
    DEFAULT_CHUNK,
    REGISTRATION,
    TeacherTargets,
    autocast_operands,
    check_teacher,
    prototype_lse,
)

__all__ = ["all_reduce_", "log_global_row_count", "sinkhorn_knopp"]


def dist_active(group=None):
    return dist.is_available() and dist.is_initialized()


def all_reduce_(x, op="sum", group=None):
    """In-place all-reduce ("sum" or "max") when torch.distributed is initialised; identity otherwise."""
    if dist_active(group):
        dist.all_reduce(x, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=group)
    return x


def all_reduce_logsumexp_(lse, group=None):
    """log(sum over ranks of exp(lse)), elementwise and in place, without overflow (-inf where no rank has mass)."""
    if not dist_active(group):
        return lse
    m = all_reduce_(lse.clone(), "max", group)
    finite = torch.isfinite(m)
    s = all_reduce_(torch.where(finite, torch.exp(lse - torch.where(finite, m, 0.0)), 0.0), "sum", group)
    return lse.copy_(torch.where(finite, m + torch.log(s), m))


def log_global_row_count(n_local, device, n_rows=None, group=None):
    """log(B_global): of the given n_rows, else of the local count all-reduced over ranks (one process: n_local).
    Across ranks it stays on the device, a 0-d float64 tensor (no host read; float64 so that it rounds as the
    one-process math.log does)."""
    if n_rows is not None:
        if n_rows < 1:
            raise ValueError(f"sinkhorn_knopp n_rows must be >= 1, got {n_rows}")
        return math.log(n_rows)
    if not dist_active(group):
        return math.log(n_local)
    count = torch.full((), float(n_local), dtype=torch.float64, device=device)
    return torch.log(all_reduce_(count, "sum", group))


@torch.no_grad()
def sinkhorn_knopp(
    features, prototypes, temp, n_iters=3, *, n_rows=None, group=None, chunk=DEFAULT_CHUNK, backend="auto"
):
    """Sinkhorn-Knopp targets (DINOv2 semantics) of teacher features [T, B, D] and prototypes [K, D] as TeacherTargets.

    All T * B rows are balanced together (and with the other ranks' rows over `group` when torch.distributed is
    initialised). n_rows: B_global, e.g. the global masked-patch count for iBOT; default: local rows summed over
    ranks. Every rank calls this, even with zero local rows (the collectives must match). backend: "auto" (Triton
    on CUDA, torch elsewhere), "triton" (also on a CPU under TRITON_INTERPRET=1) or "torch" (chunked).
    """
    check_teacher(features, prototypes, temp)
    if n_iters < 1:
        raise ValueError(f"sinkhorn_knopp needs n_iters >= 1, got {n_iters}")
    if chunk < 1:
        raise ValueError(f"sinkhorn_knopp needs chunk >= 1, got {chunk}")
    be = REGISTRATION.resolve("sinkhorn_knopp", backend, features)
    features, W = autocast_operands(features.detach(), prototypes.detach())
    x = features.reshape(-1, features.shape[-1])  # [R, D]
    R, K = x.shape[0], W.shape[0]
    log_n = log_global_row_count(R, x.device, n_rows, group)
    log_c = torch.zeros(R, device=x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    for _ in range(n_iters):
        a = -all_reduce_logsumexp_(prototype_lse(x, W, log_c, float(temp), 0, int(chunk), be), group) - math.log(K)
        log_c = -prototype_lse(x, W, a, float(temp), 1, int(chunk), be) - log_n
    b = (log_c + log_n).reshape(features.shape[:2])
    return TeacherTargets(features, W, 1.0 / temp, a, b)
