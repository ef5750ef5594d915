"""Teacher targets in factored form, computed block by block over the prototypes (no [rows, K] tensor).

P[t, b, k] = exp(xt[t, b] . Wt[k] / teacher_temp + a[k] + b[t, b]): Sinkhorn-Knopp (sinkhorn_targets) or softmax
centering (softmax_center_targets) reduce to the two log-scale vectors a [K] and b [T, B]. The chunked loss
(fastvit.ops.prototype_cross_entropy) recomputes P blockwise from them.
"""

from dataclasses import dataclass

import torch

from fastvit.ops.sinkhorn import all_reduce_, global_row_count

DEFAULT_CHUNK = 8192


@dataclass
class TeacherTargets:
    """P[t, b, k] = exp(features[t, b] . prototypes[k] * inv_temp + a[k] + b[t, b]); never differentiated."""

    features: torch.Tensor  # [T, B, D] teacher bottleneck features
    prototypes: torch.Tensor  # [K, D] teacher prototypes
    inv_temp: float
    a: torch.Tensor  # [K] fp32 per-prototype log scale
    b: torch.Tensor  # [T, B] fp32 per-row log scale

    def columns(self, index):
        """The targets of rows [:, index] only (a slice or an index tensor over B), e.g. one microbatch's images."""
        return TeacherTargets(self.features[:, index], self.prototypes, self.inv_temp, self.a, self.b[:, index])

    def materialize(self):
        t = self.features @ self.prototypes.t()
        t = t if t.dtype == torch.float64 else t.float()
        return torch.exp(t * self.inv_temp + self.a + self.b[..., None])


def _teacher_chunks(x_RD, W_KD, inv_temp, chunk):
    for k0 in range(0, W_KD.shape[0], chunk):
        yield k0, (x_RD @ W_KD[k0 : k0 + chunk].t()).float() * inv_temp


def _check_teacher(features, prototypes, temp):
    if features.dim() != 3 or prototypes.dim() != 2 or features.shape[-1] != prototypes.shape[-1]:
        raise ValueError(
            f"teacher features must be [T, B, D] and prototypes [K, D], got {tuple(features.shape)} "
            f"and {tuple(prototypes.shape)}"
        )
    if not temp > 0:
        raise ValueError(f"teacher temperature must be positive, got {temp}")


@torch.no_grad()
def sinkhorn_targets(features, prototypes, temp, n_iters=3, *, n_rows=None, group=None, chunk=DEFAULT_CHUNK):
    """Sinkhorn-Knopp (DINOv2 semantics) over all T*B teacher rows together, streamed over prototype blocks.

    Equals fastvit.ops.sinkhorn_knopp(features @ prototypes^T) viewed as [T, B, K]; n_rows/group as there.
    """
    _check_teacher(features, prototypes, temp)
    if n_iters < 1:
        raise ValueError(f"sinkhorn_targets needs n_iters >= 1, got {n_iters}")
    x = features.detach().reshape(-1, features.shape[-1])  # [R, D]
    W = prototypes.detach()
    R, K, inv = x.shape[0], W.shape[0], 1.0 / temp
    n_rows = global_row_count(R, x.device, n_rows, group)
    # Any shift cancels in the normalisations; the Cauchy-Schwarz bound keeps every exponent <= 0 without a pass.
    bound = x.float().norm(dim=-1).max() if R else torch.zeros((), device=x.device)
    shift = all_reduce_((bound * W.float().norm(dim=-1).max() * inv).reshape(1), "max", group)
    c = torch.ones(R, device=x.device, dtype=torch.float32)
    for _ in range(n_iters):
        proto = torch.cat([c @ torch.exp(t - shift) for _, t in _teacher_chunks(x, W, inv, chunk)])  # [K]
        r = 1.0 / (all_reduce_(proto, "sum", group) * K)
        rows = torch.zeros(R, device=x.device, dtype=torch.float32)
        for k0, t in _teacher_chunks(x, W, inv, chunk):
            rows += torch.exp(t - shift) @ r[k0 : k0 + t.shape[1]]
        c = 1.0 / (rows * n_rows)
    b = (torch.log(c * n_rows) - shift).reshape(features.shape[:2])
    return TeacherTargets(features.detach(), W, inv, torch.log(r), b)


@torch.no_grad()
def softmax_center_targets(features, prototypes, center, temp, *, chunk=DEFAULT_CHUNK):
    """softmax((t - center) / temp) in factored form: a = -center / temp, b = -logsumexp_k((t - center) / temp)."""
    _check_teacher(features, prototypes, temp)
    x = features.detach().reshape(-1, features.shape[-1])
    W, inv = prototypes.detach(), 1.0 / temp
    a = -center.detach().float().reshape(-1) * inv
    if a.shape[0] != W.shape[0]:
        raise ValueError(f"center has {a.shape[0]} entries but there are {W.shape[0]} prototypes")
    lse = torch.full((x.shape[0],), float("-inf"), device=x.device)
    for k0, t in _teacher_chunks(x, W, inv, chunk):
        lse = torch.logaddexp(lse, torch.logsumexp(t + a[k0 : k0 + t.shape[1]], dim=-1))
    return TeacherTargets(features.detach(), W, inv, a, -lse.reshape(features.shape[:2]))
