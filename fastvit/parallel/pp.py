"""Pipeline parallelism with torch.distributed.pipelining: the ViT's blocks split into equal stages.

A ViTStage holds blocks [a, b) of a VisionTransformer under their global index (blocks.<i>.*), plus the token
embedding on the first stage and the final norm on the last, all under the full model's parameter names, so
checkpoints move freely between pipeline layouts; a task's stage module wraps it and says what runs through it
(Web-DINO's packed multi-crop tokens and heads). Stage s lives on pp rank s % pp (looped placement: rank r holds
stages r, r + pp, ... when interleaved).

Per step (microbatches split the batch):

    ids = stage_ids(mesh.rank("pp"), dims.pp, dims.virtual_stages)      # this rank's stages, blocks stage_blocks()
    # ... parallelize_vit(stage, mesh, cfg.parallel) on each stage module (TP / checkpointing / FSDP) ...
    student = build_schedule(stages, mesh, n_micro, loss_fn=loss_fn, kind="1f1b")   # a Pipeline; or "interleaved"
    teacher = build_schedule(t_stages, mesh, n_micro)                               # forward only
    target = teacher_forward(teacher, images)        # teacher outputs on the last stage, no grad
    student.step(images, target=target, losses=[])   # forward and backward of every microbatch

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
    """The parameters of one pipeline stage of a ViT: [embed] -> blocks[a:b] -> [final norm], with the model's own
    token preparation (patch_tokens, with_prefix); the task's stage module runs them."""

    # token preparation is the model's own code, run on the parameters registered here
    _grid_of = VisionTransformer._grid_of
    pos_embed_for = VisionTransformer.pos_embed_for
    patch_tokens = VisionTransformer.patch_tokens
    with_prefix = VisionTransformer.with_prefix

    def __init__(self, vit, blocks, *, first, last):
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


def teacher_forward(pipeline, *inputs, **kwargs):
    """Forward-only pass of the whole batch through the pipeline, without grad; the last stage's merged
    outputs on the rank that holds it, None elsewhere (inputs are only read on the first stage's rank; kwargs,
    tensors split by microbatch like the inputs, go to every stage)."""
    with torch.no_grad():
        out = pipeline.eval(*(inputs if pipeline.is_first else ()), **kwargs)
    return out if pipeline.is_last else None


class StagedBackbone(nn.Module):
    """The whole ViT's forward_features over the pipeline ranks, for evaluation from the live stages
    (train.eval_every under parallel.pp): no schedule and no microbatches. This rank's ViTStages run in stage
    order on the dense tokens (B, L, D), which travel point to point in fp32 to the next stage's pp rank; the
    last stage's final-norm tokens are broadcast over pp, so every pp rank returns the model's {"cls",
    "registers", "patch"} (fp32). Every pp rank of a chain calls it with the same images (as in training, the
    pp ranks of a data-parallel group read the same ones). Per batch it sends n_stages - 1 activations and
    broadcasts one: the traffic of one forward of the batch through the pipeline, the other stages' ranks idle
    meanwhile."""

    _grid_of = VisionTransformer._grid_of

    def __init__(self, stages, mesh):
        super().__init__()
        self.stages = nn.ModuleDict({str(s): stage for s, stage in stages})  # stage index -> ViTStage
        self.cfg = stages[0][1].cfg
        self.group, self.pp_rank = mesh.pp.get_group(), mesh.rank("pp")
        self.pp, self.n_stages = mesh.dims.pp, mesh.dims.n_stages

    def forward(self, x_B3HW):
        cfg, last = self.cfg, self.n_stages - 1
        h, w = self._grid_of(x_B3HW)
        shape = (x_B3HW.shape[0], 1 + cfg.n_registers + h * w, cfg.width)
        x_BLD = None
        for s in range(self.n_stages):
            if s % self.pp != self.pp_rank:
                continue
            stage = self.stages[str(s)]
            if s == 0:
                x_BLD = stage.with_prefix(*stage.patch_tokens(x_B3HW))
            else:
                x_BLD = torch.empty(shape, device=x_B3HW.device)
                dist.recv(x_BLD, group=self.group, group_src=(s - 1) % self.pp)
            for block in stage.blocks.values():
                x_BLD = block(x_BLD)
            if s < last:
                dist.send(x_BLD.float().contiguous(), group=self.group, group_dst=(s + 1) % self.pp)
            else:
                x_BLD = stage.norm(x_BLD).float().contiguous()
        if self.pp_rank != last % self.pp:
            x_BLD = torch.empty(shape, device=x_B3HW.device)
        dist.broadcast(x_BLD, group=self.group, group_src=last % self.pp)
        r = cfg.n_registers
        return {"cls": x_BLD[:, 0], "registers": x_BLD[:, 1 : 1 + r], "patch": x_BLD[:, 1 + r :]}
