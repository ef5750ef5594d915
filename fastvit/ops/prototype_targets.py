"""Teacher targets in factored form, and the log-sum-exp passes that compute them without a [rows, K] tensor.

P[t, b, k] = exp(xt[t, b] . Wt[k] / teacher_temp + a[k] + b[t, b]): Sinkhorn-Knopp (fastvit.ops.sinkhorn) and
softmax centering (softmax_center_targets) both reduce to the two log-scale vectors a [K] and b [T, B], and the
fused loss (fastvit.ops.prototype_cross_entropy) recomputes P tile by tile from them.

fastvit::prototype_lse is the one pass both need: out = logsumexp of z = x w^T / temp plus a bias, over rows (dim=0,
bias [R], out [K]) or over prototypes (dim=1, bias [K], out [R]); Triton (kernels/sinkhorn.py) or chunked torch.
"""

from dataclasses import dataclass

import torch

from fastvit.ops import backend as backend_lib

REGISTRATION = backend_lib.Registration(
    ops=("sinkhorn_knopp",), kernels=("sinkhorn",), backends=("auto", "triton", "torch"), bench="dino_loss"
)
DEFAULT_CHUNK = 8192  # prototypes per block of the torch passes: bounds their fp32 temporaries to [rows, 8192]


def matmul_operands(x, w):
    """x, w for the torch matmuls: rounded to one dtype (bf16 / fp16 features pull their prototypes down, as
    autocast does), then computed in fp32 (float64 stays float64). The products of the rounded operands are exact
    and accumulate in fp32, as in the Triton kernels: a bf16 matmul output would add a rounding of the logits that
    1 / teacher_temp (25 at 0.04) turns into exponent error, and CPUs have no bf16 matrix units anyway."""
    dt = operand_dtype(x, w)
    out = torch.float64 if dt == torch.float64 else torch.float32
    return x.to(dt).to(out), w.to(dt).to(out)


def autocast_operands(x, w):
    """x, w as a matmul under autocast takes them: when autocast is on for their device, fp32 operands are rounded
    to its dtype (the head's normalize hands fp32 features to the loss under bf16 autocast, where DINOv2's
    `last_layer` matmul runs in the low precision). Without autocast they are returned as they are."""
    dev = x.device.type
    if not torch.is_autocast_enabled(dev):
        return x, w
    dt = torch.get_autocast_dtype(dev)
    return (x.to(dt) if x.dtype == torch.float32 else x), (w.to(dt) if w.dtype == torch.float32 else w)


def operand_dtype(x, w):
    """The dtype both matmul operands are rounded to: float64 if either is, else that of bf16 / fp16 features,
    else fp32 (the Triton kernels read bf16 / fp16 operands as they are, for the tensor cores)."""
    if x.dtype == torch.float64 or w.dtype == torch.float64:
        return torch.float64
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32


def _logit_chunks(x_RD, w_KD, inv_temp, chunk):
    """(k0, z [R, kc]) with z = x w[k0 : k0 + kc]^T * inv_temp in fp32 (float64 stays float64)."""
    out_dt = torch.float64 if x_RD.dtype == torch.float64 else torch.float32
    for k0 in range(0, w_KD.shape[0], chunk):
        yield k0, (x_RD @ w_KD[k0 : k0 + chunk].t()).to(out_dt) * inv_temp


def _lse_torch(x, w, bias, inv_temp, dim, chunk):
    if dim == 0:
        if x.shape[0] == 0:
            return torch.full((w.shape[0],), float("-inf"), device=x.device, dtype=bias.dtype)
        return torch.cat([torch.logsumexp(z + bias[:, None], dim=0) for _, z in _logit_chunks(x, w, inv_temp, chunk)])
    lse = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=bias.dtype)
    for k0, z in _logit_chunks(x, w, inv_temp, chunk):
        lse = torch.logaddexp(lse, torch.logsumexp(z + bias[k0 : k0 + z.shape[1]], dim=-1))
    return lse


@torch.library.custom_op("fastvit::prototype_lse", mutates_args=())
def prototype_lse(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, temp: float, dim: int, chunk: int, backend: str
) -> torch.Tensor:
    """dim=0: out[k] = logsumexp_r(x[r] . w[k] / temp + bias[r]); dim=1: out[r] = logsumexp_k(... + bias[k])."""
    with torch.autocast(x.device.type, enabled=False):  # the op picks its own dtypes (see matmul_operands)
        if backend == "triton":
            from fastvit.kernels import sinkhorn as kernels

            dt = operand_dtype(x, w)
            fn = kernels.sinkhorn_prototype_lse_triton if dim == 0 else kernels.sinkhorn_row_lse_triton
            return fn(x.to(dt), w.to(dt), bias.float(), temp)
        return _lse_torch(*matmul_operands(x, w), bias, 1.0 / temp, dim, chunk)


@prototype_lse.register_fake
def _(x, w, bias, temp, dim, chunk, backend):
    return bias.new_empty(w.shape[0] if dim == 0 else x.shape[0])


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
        """P [T, B, K] (fp32, float64 stays float64): for tests and references only."""
        x, w = matmul_operands(self.features, self.prototypes)
        with torch.autocast(x.device.type, enabled=False):
            t = x @ w.t()
        t = t if t.dtype == torch.float64 else t.float()
        return torch.exp(t * self.inv_temp + self.a + self.b[..., None])


def check_teacher(features, prototypes, temp):
    if features.dim() != 3 or prototypes.dim() != 2 or features.shape[-1] != prototypes.shape[-1]:
        raise ValueError(
            f"teacher features must be [T, B, D] and prototypes [K, D], got {tuple(features.shape)} "
            f"and {tuple(prototypes.shape)}"
        )
    if not temp > 0:
        raise ValueError(f"teacher temperature must be positive, got {temp}")


@torch.no_grad()
def softmax_center_targets(features, prototypes, center, temp, *, chunk=DEFAULT_CHUNK, backend="auto"):
    """softmax((t - center) / temp) in factored form: a = -center / temp, b = -logsumexp_k((t - center) / temp)."""
    check_teacher(features, prototypes, temp)
    be = REGISTRATION.resolve("softmax_center_targets", backend, features)
    features, W = autocast_operands(features.detach(), prototypes.detach())
    x = features.reshape(-1, features.shape[-1])
    a = -center.detach().float().reshape(-1) / temp
    if a.shape[0] != W.shape[0]:
        raise ValueError(f"center has {a.shape[0]} entries but there are {W.shape[0]} prototypes")
    lse = prototype_lse(x, W, a, float(temp), 1, int(chunk), be)
    return TeacherTargets(features.detach(), W, 1.0 / temp, a, -lse.reshape(features.shape[:2]))
