"""One optimizer step, the same for `fastvit train` (fastvit/train/loop.py) and `fastvit bench step`.

    autocast = autocast_for(cfg, device)
    out = train_step(task, optimizer, batches, step=step, total=total, cfg_optim=cfg.optim, autocast=autocast)
    out.finite, out.grad_norm       # read on the host: the step's one host sync
    out.terms                       # loss terms (len(task.loss_keys),) on the device, mean over micro-batches

Per step: lr / weight decay and the task's schedules, then per micro-batch a forward and backward under
autocast (gradients reduced over the data-parallel ranks on the last micro-batch only), the global gradient
norm and clipping, and, when the losses and the norm are finite on every rank, the optimizer step and the
task's after_step (the EMA teacher); otherwise the gradients are dropped and the step is skipped.
"""

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from fastvit.train.optim import apply_schedule


@dataclass
class StepOutput:
    terms: torch.Tensor  # (len(loss_keys),) fp32 on the training device: mean over the micro-batches
    sched: dict  # the task's schedules of this step
    lr: float
    wd: float
    grad_norm: float  # before clipping; nan when a loss was not finite
    finite: bool  # every rank's losses and the gradient norm were finite and under the limit: the optimizer stepped
    skipped: int  # unreadable samples replaced in this step's batches (this rank)
    exploded: bool = False  # finite, but the gradient norm was over max_grad_norm: skipped


def precision(cfg, device):
    """ "bf16" or "fp32": train.precision, where auto is bf16 autocast on GPUs and fp32 on CPUs."""
    if cfg.train.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.train.precision


def autocast_for(cfg, device):
    """The autocast context of every forward (bf16 on GPUs by default; disabled, fp32, on CPUs)."""
    if precision(cfg, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


# What a batch says about its samples, read on the host (e.g. captions looked up by read_indices, a pipeline's
# masked patches per microbatch from mask_counts): never moved.
HOST_KEYS = ("labels", "indices", "read_indices", "epochs", "mask_counts")


def to_device(batch, device):
    """Tensors of a loader batch on `device` (non-blocking), but the HOST_KEYS and non-tensors (skipped, n_masked)."""
    move = lambda k, v: torch.is_tensor(v) and k not in HOST_KEYS  # noqa: E731
    return {k: v.to(device, non_blocking=True) if move(k, v) else v for k, v in batch.items()}


def grad_norm_(model, max_norm, group=None):
    """Global gradient norm (a 0-d fp32 tensor on the gradients' device), clipped to max_norm when it is > 0.

    Gradients are grouped by kind (plain tensors, and DTensors per device mesh: FSDP2 shards on the dp mesh,
    TP shards on the 2-D mesh), since foreach ops cannot mix them; each group's norm is reduced across its
    ranks before they are combined. Under pipeline parallelism each pp rank holds other parameters: their
    squared norms are summed over `group`. Nothing is read on the host.
    """
    groups = {}
    for p in model.parameters():
        if p.grad is not None:
            groups.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    squares = []
    for params in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float() ** 2)
    device = next(model.parameters()).device
    total = torch.stack(squares).sum() if squares else torch.zeros((), device=device)
    if group is not None:
        dist.all_reduce(total, group=group)
    total = total.sqrt()
    if max_norm > 0:
        for params in groups.values():
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def _read_norm_and_finiteness(norm, terms):
    """(gradient norm, finite everywhere): one all-reduce on the device and the step's one host read."""
    bad = (~torch.isfinite(terms).all()).float().to(norm.device)
    both = torch.stack([norm.detach().float(), bad])
    if dist.is_initialized():  # the norm is already global: the max keeps it and spreads any rank's bad flag
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
    norm_value, bad_value = both.tolist()
    finite = bad_value == 0.0 and norm_value == norm_value and norm_value != float("inf")
    return (norm_value if bad_value == 0.0 else float("nan")), finite


def _accumulate(task, batches, accum, sched, autocast):
    """Forward + backward of `accum` micro-batches drawn from `batches` one at a time; (mean loss terms on the
    device, skipped samples)."""
    total, skipped = None, 0
    for i in range(accum):
        batch = next(batches)
        skipped += int(batch.get("skipped", 0))
        with autocast, task.gradient_sync(i == accum - 1):
            out = task.forward_backward(batch, sched, scale=1.0 / accum)
        terms = torch.stack([out[k].float() for k in task.loss_keys])
        total = terms if total is None else total + terms
    return total / accum, skipped


def train_step(task, optimizer, batches, *, step, total, cfg_optim, autocast, max_grad_norm=math.inf):
    """One optimizer step on cfg_optim.grad_accum micro-batches drawn from the iterator `batches` (this rank's,
    on the training device); returns a StepOutput. A step whose gradient norm (before clipping) is over
    max_grad_norm (the loop's guard against an exploding update) is skipped like a non-finite one."""
    lr, wd = apply_schedule(optimizer, step, total, cfg_optim)
    sched = task.schedules(step, total)
    optimizer.zero_grad(set_to_none=True)
    terms, skipped = _accumulate(task, batches, cfg_optim.grad_accum, sched, autocast)
    norm = grad_norm_(task.student, cfg_optim.clip_grad, task.grad_norm_group)
    grad_norm, finite = _read_norm_and_finiteness(norm, terms)
    exploded = finite and grad_norm > max_grad_norm  # read with the norm: no further host sync
    if finite and not exploded:
        optimizer.step()
        task.after_step(sched)
    else:
        optimizer.zero_grad(set_to_none=True)
    ok = finite and not exploded
    return StepOutput(terms, sched, lr, wd, grad_norm, finite=ok, skipped=skipped, exploded=exploded)
