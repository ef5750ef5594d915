"""Shared pieces of the parallel tests: a tiny DINO-like student / teacher, its loss, one training step,
and the single-process reference every parallel layout is compared with (all fp32 on the CPU)."""

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
from torch.distributed.tensor import DTensor

from fastvit.config import ParallelConfig
from fastvit.models.heads import DINOHead
from fastvit.models.vit import build_vit
from fastvit.objectives.teacher import ema_update_
from fastvit.parallel.pp import ViTStage, stage_blocks, stage_ids
from fastvit.parallel.tp import _tp_axis, fused_parts, to_part_major

B = 8  # global batch
K = 32  # prototypes
LR, EPS, MOMENTUM = 1e-2, 1e-5, 0.9
ATOL, RTOL = 2e-5, 1e-4  # fp32; only the summation order differs between layouts


def gather_canonical(t, fqn):
    """The full tensor of parameter (or gradient / moment) `t` named `fqn`, in the model's own row order."""
    full = t.full_tensor() if isinstance(t, DTensor) else t
    parts = fused_parts(fqn)
    if parts and isinstance(t, DTensor):
        tp_i = _tp_axis(t)
        if tp_i is not None:
            full = to_part_major(full, parts, t.device_mesh.size(tp_i))
    return full


def tiny_vit():
    # LayerScale 0.5 (not 1e-5) so that every block visibly moves the loss
    return build_vit("vit_s", width=64, depth=4, heads=4, img_size=28, patch_size=14, mlp="swiglu", layerscale_init=0.5)


class TinyDino(nn.Module):
    """backbone ViT (packed multi-crop) -> DINO head on each crop batch's CLS token."""

    def __init__(self):
        super().__init__()
        self.backbone = tiny_vit()
        self.head = DINOHead(64, out_dim=K, hidden_dim=32, bottleneck_dim=16)

    def forward(self, crops, masks=None):
        return [self.head(out["cls"]) for out in self.backbone.forward_crops(crops, masks)]


def build_pair(seed):
    torch.manual_seed(seed)
    student = TinyDino()
    teacher = copy.deepcopy(student).requires_grad_(False)
    return student, teacher


def batch(step, lo=0, hi=B):
    """Images of step `step`, rows lo:hi: one global (28 px) and one local (14 px) crop batch."""
    g = torch.Generator().manual_seed(100 + step)
    glob = torch.randn(B, 3, 28, 28, generator=g)
    loc = torch.randn(B, 3, 14, 14, generator=g)
    return [glob[lo:hi], loc[lo:hi]]


def masks(step, lo=0, hi=B):
    """iBOT-style masks (B, 4) of the global crops' 2 x 2 patches (the student sees the mask token there)."""
    g = torch.Generator().manual_seed(200 + step)
    return [torch.rand(B, 4, generator=g)[lo:hi] < 0.4, None]


def dino_loss(student_logits, teacher_logits):
    """Mean over crop batches of the cross-entropy of the student against the sharpened teacher."""
    p = F.softmax(teacher_logits / 0.05, dim=-1)
    return sum(-(p * F.log_softmax(s / 0.1, dim=-1)).sum(-1).mean() for s in student_logits) / len(student_logits)


def parallel_cfg(dp=-1, tp=1, pp=1, ac="none"):
    return ParallelConfig(dp=dp, tp=tp, pp=pp, data_parallel="fsdp", activation_checkpointing=ac)


def optimizer(model):
    # eps 1e-5: Adam's m / sqrt(v) would turn summation-order noise of near-zero grads into lr-sized steps
    return torch.optim.AdamW(model.parameters(), lr=LR, eps=EPS, weight_decay=0.05, foreach=False)


def local_bytes(tensors):
    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def memory_report(student, teacher, opt):
    """Bytes this rank holds: params, grads, optimizer states (student) and teacher params."""
    states = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
    return {
        "params": local_bytes(student.parameters()),
        "grads": local_bytes(p.grad for p in student.parameters() if p.grad is not None),
        "optim": local_bytes(states),
        "teacher": local_bytes(teacher.parameters()),
    }


def train_step(student, teacher, opt, step, lo=0, hi=B, dp_group=None, want_grads=False):
    """One step on rows lo:hi of the batch of `step`.

    Returns (loss averaged over dp, None or ({fqn: full canonical grad}, memory_report))."""
    crops = batch(step, lo, hi)
    logits = student(crops, masks(step, lo, hi))
    with torch.no_grad():
        target = teacher(crops[:1])[0]
    loss = dino_loss(logits, target)
    loss.backward()
    grads = None
    if want_grads:
        grads = {n: gather_canonical(p.grad, n).clone() for n, p in student.named_parameters() if p.grad is not None}
    opt.step()
    if want_grads:
        grads = (grads, memory_report(student, teacher, opt))
    opt.zero_grad()
    ema_update_(list(teacher.parameters()), list(student.parameters()), MOMENTUM)
    loss = loss.detach().clone()
    if dp_group is not None and dist.get_world_size(dp_group) > 1:
        dist.all_reduce(loss, group=dp_group)
        loss /= dist.get_world_size(dp_group)
    return loss, grads


def full_params(model):
    return {n: gather_canonical(p, n).detach().clone() for n, p in model.named_parameters()}


def reference(steps=2):
    """Single-process run: losses of each step, grads of step 0, teacher params after the last step."""
    student, teacher = build_pair(0)
    opt = optimizer(student)
    losses, grads0 = [], None
    for step in range(steps):
        loss, info = train_step(student, teacher, opt, step, want_grads=step == 0)
        losses.append(loss)
        grads0 = grads0 or info
    return {"losses": torch.stack(losses), "grads": grads0[0], "memory": grads0[1], "teacher": full_params(teacher)}


def state_of(student, teacher, opt):
    model_sd, optim_sd = get_state_dict(student, opt)
    return {"student": model_sd, "teacher": get_model_state_dict(teacher), "optim": optim_sd}


# ---- pipeline: dense images through ViTStage (embed -> blocks -> norm -> CLS -> head) ------------------


class DenseStage(ViTStage):
    """A ViTStage of dense images: the first takes (B, 3, H, W), the others (B, L, D) tokens; the last returns
    head(CLS) (B, out), the others tokens."""

    def __init__(self, vit, blocks, *, first, last, head=None):
        super().__init__(vit, blocks, first=first, last=last)
        if last:
            self.head = head if head is not None else nn.Identity()

    def forward(self, x):
        if self.is_first:
            x = self.with_prefix(*self.patch_tokens(x))  # (B, 3, H, W) -> (B, L, D)
        for block in self.blocks.values():
            x = block(x)
        if self.is_last:
            return self.head(self.norm(x)[:, 0])
        return x


def pipeline_stages(vit, mesh, head=None):
    """[(stage_index, DenseStage)] of this rank's stages."""
    dims = mesh.dims
    ranges = stage_blocks(vit.cfg.depth, dims.n_stages)
    ids = stage_ids(mesh.rank("pp"), dims.pp, dims.virtual_stages)
    last = dims.n_stages - 1
    return [
        (s, DenseStage(vit, ranges[s], first=s == 0, last=s == last, head=head if s == last else None)) for s in ids
    ]


def pipeline_step(pipeline, x, target, mesh):
    """Forward and backward of one batch; the mean loss (0-d) on every rank: averaged over the microbatches on the
    last stage, sent to every pp rank and averaged over the dp axis (equal local batches)."""
    first, last = pipeline.is_first, pipeline.is_last
    losses = []
    pipeline.step(*((x,) if first else ()), target=target if last else None, losses=losses if last else None)
    loss = torch.stack([v.detach().float() for v in losses]).mean() if last else torch.zeros((), device=pipeline.device)
    if mesh.dims.pp > 1:
        dist.all_reduce(loss, group=mesh.pp.get_group())  # only the last stage's rank holds a non-zero value
    if mesh.dims.dp > 1:
        dist.all_reduce(loss, group=mesh.dp.get_group())
        loss /= mesh.dims.dp
    return loss


def pp_pair(seed):
    """(vit, head) of the student and a deep copy for the teacher."""
    torch.manual_seed(seed)
    vit, head = tiny_vit(), DINOHead(64, out_dim=K, hidden_dim=32, bottleneck_dim=16)
    t_vit, t_head = copy.deepcopy(vit).requires_grad_(False), copy.deepcopy(head).requires_grad_(False)
    return (vit, head), (t_vit, t_head)


def pp_loss(student_logits, teacher_logits):
    return dino_loss([student_logits], teacher_logits)


def pp_reference():
    """One process: loss and grads of one dense step of the full model, teacher params after the EMA."""
    (vit, head), (t_vit, t_head) = pp_pair(0)
    model = DenseStage(vit, range(4), first=True, last=True, head=head)
    teacher = DenseStage(t_vit, range(4), first=True, last=True, head=t_head)
    x = batch(0)[0]
    with torch.no_grad():
        target = teacher(x)
    loss = pp_loss(model(x), target)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt = optimizer(model)
    opt.step()
    ema_update_(list(teacher.parameters()), list(model.parameters()), MOMENTUM)
    return {"loss": loss.detach(), "grads": grads, "teacher": full_params(teacher)}


def pp_run(mesh, cfg, kind, n_micro):
    """One pipelined step of the student (schedule `kind`) with the teacher through its own forward-only
    pipeline; returns the loss seen on this rank, full grads and teacher params of this rank's stages."""
    from fastvit.parallel.parallelize import parallelize_vit
    from fastvit.parallel.pp import build_schedule, teacher_forward

    (vit, head), (t_vit, t_head) = pp_pair(0)
    stages = pipeline_stages(vit, mesh, head=head)
    t_stages = pipeline_stages(t_vit, mesh, head=t_head)
    for (_, s), (_, t) in zip(stages, t_stages):
        parallelize_vit(s, mesh, cfg)
        parallelize_vit(t, mesh, cfg, teacher=True)
    student = build_schedule(stages, mesh, n_micro, loss_fn=pp_loss, kind=kind)
    teacher = build_schedule(t_stages, mesh, n_micro, kind="interleaved" if kind == "interleaved" else "gpipe")
    dp, dp_rank = mesh.dims.dp, mesh.rank("dp")
    x = batch(0, dp_rank * B // dp, (dp_rank + 1) * B // dp)[0]
    target = teacher_forward(teacher, x)
    loss = pipeline_step(student, x, target, mesh)
    modules = [m for _, m in stages]
    grads = {
        n: gather_canonical(p.grad, n).clone() for m in modules for n, p in m.named_parameters() if p.grad is not None
    }
    opt = torch.optim.AdamW(
        [p for m in modules for p in m.parameters()], lr=LR, eps=EPS, weight_decay=0.05, foreach=False
    )
    opt.step()
    t_params = [p for _, t in t_stages for p in t.parameters()]
    ema_update_(t_params, [p for m in modules for p in m.parameters()], MOMENTUM)
    teacher_params = {n: gather_canonical(p, n).clone() for _, t in t_stages for n, p in t.named_parameters()}
    return {"loss": loss, "grads": grads, "teacher": teacher_params}
