"""Pipeline parallelism with torch.distributed.pipelining: the ViT's blocks split into equal stages.

A ViTStage holds blocks [a, b) of a VisionTransformer under their global index (blocks.<i>.*), plus the token
embedding on the first stage and the final norm and a head on the last, all under the full model's parameter
names, so checkpoints move freely between pipeline layouts. Stage s lives on pp rank s % pp (looped
placement: rank r holds stages r, r + pp, ... when interleaved).

Per step (dense (B, 3, H, W) images; microbatches split the batch):

    stages = pipeline_stages(student_vit, mesh, head=student_head)           # [(stage_index, ViTStage)]
    t_stages = pipeline_stages(teacher_vit, mesh, head=teacher_head)
    # ... parallelize_vit(stage, mesh, cfg.parallel) on each stage module (TP / checkpointing / FSDP) ...
    student = build_schedule(stages, mesh, n_micro, loss_fn=loss_fn, kind="1f1b")   # a Pipeline; or "interleaved"
    teacher = build_schedule(t_stages, mesh, n_micro)                               # forward only
    target = teacher_forward(teacher, images)        # teacher outputs on the last stage, no grad
    loss = pipeline_step(student, images, target, mesh)    # backward done; mean loss on every rank

loss_fn(output, target) runs on the last stage per microbatch and returns that microbatch's mean loss; the
schedule scales the gradients by 1 / n_microbatches, so they equal those of the whole-batch mean.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from fastvit.models.vit import VisionTransformer

SCHEDULES = ("1f1b", "interleaved", "gpipe")


def stage_blocks(depth, n_stages):
    """Block ranges of the n_stages equal stages."""
    if n_stages < 1 or depth % n_stages:
        raise ValueError(f"{n_stages} pipeline stages must divide the depth {depth} evenly")
    per = depth // n_stages
    return [range(s * per, (s + 1) * per) for s in range(n_stages)]


def stage_ids(pp_rank, pp, virtual_stages=1):
    """Stage indices held by pp rank `pp_rank` (looped placement)."""
    return [pp_rank + k * pp for k in range(virtual_stages)]


class ViTStage(nn.Module):
    """One pipeline stage of a ViT: [embed] -> blocks[a:b] -> [final norm -> CLS -> head].

    The first stage takes images (B, 3, H, W); the others take tokens (B, L, D). The last stage returns
    head(cls) (B, out) (the CLS features (B, D) when head is None); the others return tokens (B, L, D).
    """

    # token preparation is the model's own code, run on the parameters registered here
    _grid_of = VisionTransformer._grid_of
    pos_embed_for = VisionTransformer.pos_embed_for
    patch_tokens = VisionTransformer.patch_tokens
    with_prefix = VisionTransformer.with_prefix

    def __init__(self, vit, blocks, *, first, last, head=None):
        super().__init__()
        self.cfg = vit.cfg
        self.is_first, self.is_last = first, last
        if first:
            self.resample_pos = vit.resample_pos
            self.cls_token, self.pos_embed, self.mask_token = vit.cls_token, vit.pos_embed, vit.mask_token
            self.register_parameter("register_tokens", vit.register_tokens)
            self.patch_embed = vit.patch_embed
        self.blocks = nn.ModuleDict({str(i): vit.blocks[i] for i in blocks})
        if last:
            self.norm = vit.norm
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
    """[(stage_index, ViTStage)] of this rank's stages; `vit` may live on the meta device."""
    dims = mesh.dims
    ranges = stage_blocks(vit.cfg.depth, dims.n_stages)
    ids = stage_ids(mesh.rank("pp"), dims.pp, dims.virtual_stages)
    last = dims.n_stages - 1
    return [(s, ViTStage(vit, ranges[s], first=s == 0, last=s == last, head=head if s == last else None)) for s in ids]


class Pipeline:
    """A torch.distributed.pipelining schedule and this rank's PipelineStages, which the schedule keeps private:
    step / eval run it, is_first / is_last say whether this rank holds the first / last stage."""

    def __init__(self, schedule, stages):
        self.schedule, self.stages = schedule, stages

    @property
    def is_first(self):
        return any(s.is_first for s in self.stages)

    @property
    def is_last(self):
        return any(s.is_last for s in self.stages)

    @property
    def device(self):
        return self.stages[0].device

    def step(self, *args, **kwargs):
        return self.schedule.step(*args, **kwargs)

    def eval(self, *args, **kwargs):
        return self.schedule.eval(*args, **kwargs)


def build_schedule(stages, mesh, n_microbatches, loss_fn=None, kind="1f1b", example_io=None):
    """A Pipeline (schedule) over this rank's [(stage_index, module)] on the "pp" axis.

    kind: "1f1b" or "gpipe" (one stage per rank), "interleaved" (interleaved 1F1B, several stages per rank).
    Without loss_fn the schedule is forward-only (use teacher_forward). example_io: {stage_index: (inputs,
    outputs)} of one microbatch (meta tensors will do), given to torch's PipelineStage as its static shapes, so
    it infers none (no metadata forward, no loss_fn call on made-up tensors); None: torch infers them from the
    first microbatch.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"pipeline schedule must be one of {SCHEDULES}, got {kind!r}")
    dims = mesh.dims
    if n_microbatches < dims.pp:
        raise ValueError(f"{n_microbatches} microbatches cannot fill {dims.pp} pipeline ranks; use at least {dims.pp}")
    if (kind == "interleaved") != (dims.virtual_stages > 1):
        raise ValueError(f"schedule {kind!r} does not fit {dims.virtual_stages} stage(s) per rank")
    device = _device(stages[0][1])
    group = mesh.pp.get_group()
    io = example_io or {}
    pipe = []
    for s, m in stages:
        inputs, outputs = io.get(s, (None, None))
        pipe.append(PipelineStage(m, s, dims.n_stages, device, input_args=inputs, output_args=outputs, group=group))
    if kind == "interleaved":
        return Pipeline(ScheduleInterleaved1F1B(pipe, n_microbatches, loss_fn=loss_fn), pipe)
    cls = Schedule1F1B if kind == "1f1b" and loss_fn is not None else ScheduleGPipe
    return Pipeline(cls(pipe[0], n_microbatches, loss_fn=loss_fn), pipe)


def _device(module):
    p = next(module.parameters(), None)
    if p is None or p.device.type == "meta":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return p.device


def teacher_forward(pipeline, *inputs):
    """Forward-only pass of the whole batch through the pipeline, without grad; the last stage's merged
    outputs on the rank that holds it, None elsewhere (inputs are only read on the first stage's rank)."""
    with torch.no_grad():
        out = pipeline.eval(*(inputs if pipeline.is_first else ()))
    return out if pipeline.is_last else None


def pipeline_step(pipeline, x, target, mesh):
    """Forward and backward of one batch; returns the mean loss (a 0-d tensor) on every rank.

    x is read on the rank of the first stage and target on the rank of the last; the loss is averaged over
    microbatches there, sent to every pp rank and averaged over the dp axis (equal local batches)."""
    first, last = pipeline.is_first, pipeline.is_last
    losses = []
    args = (x,) if first else ()
    pipeline.step(*args, target=target if last else None, losses=losses if last else None)
    if last:
        loss = torch.stack([v.detach().float() for v in losses]).mean()
    else:
        loss = torch.zeros((), device=pipeline.device)
    if mesh.dims.pp > 1:
        dist.all_reduce(loss, group=mesh.pp.get_group())  # only the last stage's rank holds a non-zero value
    if mesh.dims.dp > 1:
        dist.all_reduce(loss, group=mesh.dp.get_group())
        loss /= mesh.dims.dp
    return loss
