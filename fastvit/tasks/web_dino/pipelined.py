"""Web-DINO through a pipeline: the student's and the teacher's blocks split into stages (schedules of
fastvit/parallel/pp.py), the packed multi-crop tokens sent from stage to stage, heads and objective on the last.

One step (every pp rank of a data-parallel group reads the same batch: the first stage uses its images, the
last its masks):
  1. teacher: a forward-only pipeline over the global crops of the whole batch; on the last stage its DINO and
     iBOT head features, then the teacher targets of the whole batch (Sinkhorn over all of it and over the dp
     ranks, exactly as without a pipeline);
  2. student: a 1F1B (or interleaved, or GPipe) schedule; per microbatch the last stage computes the losses of
     its images against their columns of the targets, and the schedule runs the backward (gradients averaged
     over the microbatches);
  3. the loss terms, averaged over the microbatches, are sent from the last stage to every pp rank.

Inputs are image-major, (B, n_g, 3, S, S), (B, n_l, 3, s, s) and masks (B, n_g, N), so that the schedule's
split along dim 0 hands each microbatch whole images; the first stage makes them crop-major. Between stages
travel the packed tokens (T, D) and the masks; each stage rebuilds the packing from the number of images
b = masks.shape[0] and the crop sizes. The last stage reads each microbatch's masked patches from a keyword input
the schedules split alongside (microbatch_masks.split_masks: the loader's indices placed per microbatch on the
device, padded to the largest microbatch's count W, the counts on the host): its heads run on W rows, and the
padding is dropped outside the stage with the host counts, so no step has a data-dependent shape.
DINO and iBOT losses of the microbatches average to those of the whole batch; KoLeo is computed within each
microbatch (as DINOv2 computes it within each rank's batch).
"""

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from fastvit.models.heads import PrototypeLogits
from fastvit.models.layers import Packing
from fastvit.parallel.meta_init import materialize_stages
from fastvit.parallel.pp import StagedBackbone, ViTStage, build_schedule, stage_blocks, stage_ids, teacher_forward
from fastvit.tasks.web_dino.microbatch_masks import split_masks
from fastvit.tasks.web_dino.model import head_outputs
from fastvit.tasks.web_dino.task import WebDINOTask


@dataclass(frozen=True)
class CropLayout:
    """Crops per image and tokens per crop (CLS + registers + patches) of the packed sequence."""

    n_global: int
    global_len: int
    n_local: int
    local_len: int
    n_prefix: int  # CLS + registers in front of each crop's patch tokens


def crop_layout(cfg, vit_cfg):
    d, prefix = cfg.data, 1 + vit_cfg.n_registers
    tokens = lambda size: prefix + (size // vit_cfg.patch_size) ** 2  # noqa: E731
    return CropLayout(
        d.n_global_crops, tokens(d.global_crops_size), d.n_local_crops, tokens(d.local_crops_size), prefix
    )


class WebDINOStage(nn.Module):
    """Blocks [a, b) of a WebDINO student or teacher, with the embedding on the first stage and the final norm
    and both heads on the last, under the full WebDINO's parameter names (backbone.blocks.<i>..., dino_head...).

    first: (global (b, n_g, 3, S, S), [local (b, n_l, 3, s, s) for the student], masks (b, n_g, N) bool)
    other: (tokens (T, D), masks). Every stage also takes mask_index (1, W) int64, the flat indices of the
    microbatch's masked patches into its crop-major masks, padded (see microbatch_masks); only the last reads
    it, and its iBOT rows are those W. Non-last stages return (tokens, masks). The last returns, for the teacher,
    (DINO features (b, n_g, Db) image-major, iBOT features (W, Di)); for the student (cls_g (n_g*b, D),
    DINO features of the global (n_g*b, Db) and local (n_l*b, Db) crops, iBOT features (W, Di), DINO and iBOT
    prototypes, the masks it was given), rows crop-major and masked patches in masks-crop-major order (the
    microbatch's M first, then W - M rows of padding).
    """

    def __init__(self, model, blocks, *, first, last, layout, teacher):
        super().__init__()
        self.backbone = ViTStage(model.backbone, blocks, first=first, last=last)
        self.is_first, self.is_last, self.teacher = first, last, teacher
        self.layout = layout
        self.n_local = 0 if teacher else layout.n_local  # the teacher sees the global crops only
        if last:
            self.dino_head, self.ibot_head = model.dino_head, model.ibot_head

    def forward(self, *inputs, mask_index):
        x_TD, masks_BGN = self._embed(*inputs) if self.is_first else inputs
        packing = self._packing(masks_BGN.shape[0], x_TD.device)
        for block in self.backbone.blocks.values():
            x_TD = block(x_TD, packing)
        if not self.is_last:
            return x_TD.float(), masks_BGN  # fp32 between stages, the dtype example_io declares
        return self._heads(self.backbone.norm(x_TD), masks_BGN, mask_index[0])

    def example_io(self, first_inputs, grad):
        """(inputs, outputs) of one microbatch as meta tensors, the static shapes of torch's PipelineStage.

        first_inputs: the first stage's inputs of one microbatch (or their meta copies). Between stages travel
        the packed tokens (T, D) in fp32 and the masks. The last stage's outputs go to the loss, never to a
        peer; torch reads only their number, and their iBOT rows (M) vary, so M is given as 0.
        """
        meta = lambda x, g=False: torch.empty(x.shape, dtype=x.dtype, device="meta", requires_grad=g)  # noqa: E731
        masks = meta(first_inputs[-1])
        lay, b, D = self.layout, masks.shape[0], self.backbone.cfg.width
        T = b * (lay.n_global * lay.global_len + self.n_local * lay.local_len)
        tokens = torch.empty(T, D, device="meta", requires_grad=grad)
        inputs = tuple(meta(x) for x in first_inputs) if self.is_first else (tokens, masks)
        if not self.is_last:
            return inputs, (tokens, masks)
        K, Db = self.dino_head.last_layer.weight_v.shape
        Ki, Di = self.ibot_head.last_layer.weight_v.shape
        row = lambda n, d: torch.empty(n, d, device="meta", requires_grad=grad)  # noqa: E731
        if self.teacher:
            return inputs, (row(b * lay.n_global, Db).view(b, lay.n_global, Db), row(0, Di))
        n_g, n_l = lay.n_global * b, self.n_local * b
        heads = (row(n_g, D), row(n_g, Db), row(n_l, Db), row(0, Di), row(K, Db), row(Ki, Di))
        return inputs, (*heads, masks)

    def _embed(self, global_BG3SS, *rest):
        masks_BGN, vit = rest[-1], self.backbone
        crop_major = lambda x: x.transpose(0, 1).flatten(0, 1)  # noqa: E731  (b, n, ...) -> (n*b, ...)
        g_masks = None if self.teacher else crop_major(masks_BGN)
        parts = [vit.with_prefix(*vit.patch_tokens(crop_major(global_BG3SS), g_masks))]  # (n_g*b, Lg, D)
        if self.n_local:
            parts.append(vit.with_prefix(*vit.patch_tokens(crop_major(rest[0]))))  # (n_l*b, Ll, D)
        return torch.cat([p.flatten(0, 1) for p in parts]), masks_BGN

    def _packing(self, b, device):
        lay = self.layout
        seqlens = [lay.global_len] * (lay.n_global * b) + [lay.local_len] * (self.n_local * b)
        return Packing.from_seqlens(seqlens, device)

    def _heads(self, x_TD, masks_BGN, mask_indices):
        """WebDINO.forward's head outputs (model.head_outputs) on the packed tokens, as the tuple example_io
        declares; mask_indices (M,) index the crop-major masks (n_g*b, N) flat."""
        lay, b = self.layout, masks_BGN.shape[0]
        n_g_tokens = lay.n_global * b * lay.global_len
        x_g = x_TD[:n_g_tokens].view(lay.n_global * b, lay.global_len, -1)
        masks = masks_BGN.transpose(0, 1).flatten(0, 1)  # (n_g*b, N) crop-major
        cls_l = x_TD[n_g_tokens:].view(self.n_local * b, lay.local_len, -1)[:, 0] if self.n_local else None
        out = head_outputs(
            self.dino_head, self.ibot_head, x_g[:, 0], x_g[:, lay.n_prefix :], masks, cls_l, mask_indices
        )
        if self.teacher:
            return out["dino_g"].view(lay.n_global, b, -1).transpose(0, 1), out["ibot"]
        dino_l = out["dino_l"] if self.n_local else out["dino_g"].new_zeros(0, out["dino_g"].shape[-1])
        heads = (out["cls_g"], out["dino_g"], dino_l, out["ibot"], out["dino_protos"], out["ibot_protos"])
        return (*heads, masks_BGN)


def merged_module(stages):
    """One module over a rank's stage modules whose parameter names are the full WebDINO's (for the optimizer,
    the EMA and checkpoints); it shares every parameter with the stages."""
    root = nn.Module()
    root.backbone = nn.Module()
    root.backbone.blocks = nn.ModuleDict()
    for stage in stages:
        vit = stage.backbone
        root.backbone.blocks.update(vit.blocks)
        for name, p in vit.named_parameters(recurse=False):
            root.backbone.register_parameter(name, p)
        for name in ("patch_embed", "norm"):
            if hasattr(vit, name):
                setattr(root.backbone, name, getattr(vit, name))
        if stage.is_last:
            root.dino_head, root.ibot_head = stage.dino_head, stage.ibot_head
    return root


def _prototypes(stage, head):
    """A head's normalised prototypes outside a forward (FSDP2 gathers the stage root's parameters for it)."""
    sharded = isinstance(stage, FSDPModule)
    if sharded:
        stage.unshard()
    try:
        return getattr(stage, head).prototypes().detach()
    finally:
        if sharded:
            stage.reshard()


@dataclass
class BatchTargets:
    """What each microbatch's loss on the last stage reads of its whole batch, handed to it by the schedule's
    step (loss_kwargs): the teacher targets of all images (columns per image / per masked patch), the masks and
    the masked patches per microbatch; and what it leaves: its loss terms, by its first image."""

    dino: object  # the objective's targets of the global crops, .columns(slice of images)
    ibot: object  # targets of the masked patches, microbatch-major (the teacher pipeline's order, unpadded), or None
    masks_BGN: torch.Tensor  # (B, n_g, N) bool, image-major
    masked: object  # microbatch_masks.MicrobatchMasks of the batch
    terms: dict = field(default_factory=dict)  # first image -> loss terms (len(loss_keys),)


class PipelinedWebDINOTask(WebDINOTask):
    """Web-DINO whose student and teacher run as pipeline stages over mesh.pp (see the module docstring).

    Built from a WebDINOTask (the full models and its objective; on the meta device when the run starts on meta,
    fastvit.parallel.meta_init); `student` / `teacher` are then merged_module()s of this rank's stages, so the
    plain task's schedules, EMA update, FLOPs and checkpoint state apply as they are. forward_backward runs both
    pipelines; their schedules are built at the first batch, whose microbatch gives the stages' static shapes.
    """

    def __init__(self, task, mesh):
        # not super().__init__(): that would build the models again; they come from `task`
        cfg, dims = task.cfg, mesh.dims
        if cfg.optim.grad_accum != 1:
            raise ValueError(
                f"optim.grad_accum={cfg.optim.grad_accum} with parallel.pp={dims.pp}: the pipeline already splits "
                "the batch; set parallel.pp_microbatches instead"
            )
        self.cfg, self.mesh, self.objective, self.full_cfg = cfg, mesh, task.objective, task.backbone_cfg
        self.objective.group = mesh.dp.get_group()  # only the last stage's ranks compute targets and losses
        self.layout = crop_layout(cfg, task.backbone_cfg)
        ranges = stage_blocks(self.full_cfg.depth, dims.n_stages)
        last = dims.n_stages - 1

        def stages(model, teacher):
            return [
                (s, WebDINOStage(model, ranges[s], first=s == 0, last=s == last, layout=self.layout, teacher=teacher))
                for s in stage_ids(mesh.rank("pp"), dims.pp, dims.virtual_stages)
            ]

        self.stages, self.t_stages = stages(task.student, False), stages(task.teacher, True)
        self._whole = task.student  # until wrap materialises this rank's stages of it
        self.grad_norm_group = mesh.pp.get_group()
        self.n_micro = cfg.parallel.pp_microbatches or 4 * dims.pp
        self.is_first = any(m.is_first for _, m in self.stages)
        self.is_last = any(m.is_last for _, m in self.stages)
        self.pipelines = None  # (student, teacher) Pipelines, built at the first batch

    @property
    def backbone_cfg(self):
        return self.full_cfg

    def pipelined(self, mesh):
        return self

    def live_eval_modules(self):
        stages = [m for _, m in self.t_stages]  # the FSDP roots; a rank holds only its stages of the teacher
        return stages, StagedBackbone([(s, m.backbone) for s, m in self.t_stages], self.mesh)

    def wrap(self, wrap_fn):
        """Parallelises each stage pair (TP / checkpointing / FSDP over dp), then materialises this rank's stages
        when the models were built on meta (before merging: FSDP2 re-registers its parameters at to_empty)."""
        for (_, student), (_, teacher) in zip(self.stages, self.t_stages):
            wrap_fn(student, teacher)
        materialize_stages(self._whole, [m for _, m in self.stages], [m for _, m in self.t_stages])
        self._whole = None  # the other stages' modules stay on meta; nothing holds them
        self.student = self.student_dp = merged_module([m for _, m in self.stages])
        self.teacher = self.teacher_dp = merged_module([m for _, m in self.t_stages])

    def _build_pipelines(self, student_inputs, teacher_inputs):
        """The student's schedule (1F1B, interleaved or GPipe, with the microbatch loss) and the teacher's
        forward-only one, with the static shapes of one microbatch of these inputs."""
        p, n = self.cfg.parallel, self.n_micro
        one = lambda inputs: tuple(x[: x.shape[0] // n] for x in inputs)  # noqa: E731
        io = {s: m.example_io(one(student_inputs), True) for s, m in self.stages}
        t_io = {s: m.example_io(one(teacher_inputs), False) for s, m in self.t_stages}
        student = build_schedule(self.stages, self.mesh, n, self._microbatch_loss, p.pp_schedule, example_io=io)
        t_kind = "interleaved" if self.mesh.dims.virtual_stages > 1 else "gpipe"
        teacher = build_schedule(self.t_stages, self.mesh, n, kind=t_kind, example_io=t_io)
        return student, teacher

    def build_loader(self, *, batch_size, rank, world_size, device):
        self._check_batch(batch_size)  # at the start, not at the first step
        return super().build_loader(batch_size=batch_size, rank=rank, world_size=world_size, device=device)

    def synthetic_batch(self, batch_size, device, seed=0):
        self._check_batch(batch_size)
        return super().synthetic_batch(batch_size, device, seed)

    def _check_batch(self, b):
        if b % self.n_micro:
            raise ValueError(
                f"the per-rank batch of {b} images does not split into parallel.pp_microbatches={self.n_micro}"
            )
        if b // self.n_micro < 2 and self.objective.weights["koleo"]:
            raise ValueError(
                f"microbatches of {b // self.n_micro} image(s) leave KoLeo no neighbours: use fewer "
                f"parallel.pp_microbatches (now {self.n_micro}) or a larger train.batch_size"
            )

    def _image_major_inputs(self, batch):
        """(student inputs, teacher inputs, B, MicrobatchMasks): image-major crops and masks (B, n, ...), so that
        the schedule's split along dim 0 hands each microbatch whole images, and the masked patches per
        microbatch."""
        lay = self.layout
        g, masks = batch["global_crops"], batch.get("masks")
        B, N = g.shape[0] // lay.n_global, lay.global_len - lay.n_prefix
        self._check_batch(B)
        image_major = lambda x, n: x.unflatten(0, (n, B)).transpose(0, 1).contiguous()  # noqa: E731
        where = batch
        if masks is None:  # no iBOT: masks still travel down the pipeline (they give each stage its b)
            masks = torch.zeros(lay.n_global * B, N, dtype=torch.bool, device=g.device)
            where = {"mask_counts": torch.zeros(lay.n_global * B, dtype=torch.int64)}
            where["mask_indices"] = torch.zeros(0, dtype=torch.int64, device=g.device)
            where["mask_weights"] = torch.zeros(0, device=g.device)
        masked = split_masks(
            where["mask_counts"],
            where["mask_indices"],
            where["mask_weights"],
            B=B,
            n_global=lay.n_global,
            n_micro=self.n_micro,
            n_patches=N,
        )
        g_img, m_img = image_major(g, lay.n_global), image_major(masks, lay.n_global)
        student = (g_img, image_major(batch["local_crops"], lay.n_local), m_img) if lay.n_local else (g_img, m_img)
        return student, (g_img, m_img), B, masked

    def forward_backward(self, batch, sched, *, scale=1.0):
        """Teacher pipeline, then the student schedule (forward and backward) on one batch; returns the loss
        terms (0-d tensors, averaged over the microbatches) on every pp rank."""
        assert scale == 1.0, "pipelines take no gradient accumulation (checked at start)"
        inputs, t_inputs, B, masked = self._image_major_inputs(batch)
        if self.pipelines is None:
            self.pipelines = self._build_pipelines(inputs, t_inputs)
        student, teacher = self.pipelines
        t_out = teacher_forward(teacher, *t_inputs, mask_index=masked.indices_KM)  # split like the images
        targets = self._teacher_targets(t_out, t_inputs[-1], masked, sched["teacher_temp"]) if self.is_last else None
        student.step(
            *(inputs if self.is_first else ()),
            target=torch.arange(B) if self.is_last else None,  # image indices, on the host
            losses=[] if self.is_last else None,
            loss_kwargs={"targets": targets},
            mask_index=masked.indices_KM,
        )
        if self.is_last:
            assert len(targets.terms) == self.n_micro, sorted(targets.terms)
            terms = torch.stack(list(targets.terms.values())).mean(0)
        else:
            terms = torch.zeros(len(self.loss_keys), device=t_inputs[0].device)
        dist.all_reduce(terms, group=self.grad_norm_group)  # only the last stage's rank holds non-zero values
        return dict(zip(self.loss_keys, terms.unbind(0)))

    def _teacher_targets(self, t_out, masks_BGN, masked, teacher_temp):
        """BatchTargets of the whole batch from the teacher's last-stage outputs."""
        dino_BGD, ibot_MD = t_out[0], masked.unpad(t_out[1])
        last = [m for _, m in self.t_stages if m.is_last][0]
        tg = PrototypeLogits(dino_BGD.transpose(0, 1), _prototypes(last, "dino_head"))  # [n_g, B, D]
        tp = PrototypeLogits(ibot_MD, _prototypes(last, "ibot_head")) if ibot_MD.shape[0] else None
        dino_t, ibot_t = self.objective.teacher_targets(
            teacher_global=tg, teacher_patches=tp, teacher_temp=teacher_temp
        )
        return BatchTargets(dino_t, ibot_t, masks_BGN, masked)

    def _microbatch_loss(self, output, images, *, targets):
        """Losses of the microbatch of images [lo, hi) (on the last stage) against their columns of `targets`;
        records its terms there and returns its total."""
        cls_g, dino_g, dino_l, ibot, dino_protos, ibot_protos, _ = output
        lay = self.layout
        ids = images.tolist()  # a host tensor: no device sync
        lo, hi = ids[0], ids[-1] + 1
        b, k = hi - lo, lo // (hi - lo)  # microbatch k of equal ones
        masks = targets.masks_BGN[lo:hi].transpose(0, 1).flatten(0, 1)  # (n_g*b, N) crop-major
        M, off = targets.masked.counts[k], targets.masked.starts[k]
        sp = it = weights = None
        if targets.ibot is not None and M:
            sp, it = PrototypeLogits(ibot[:M], ibot_protos), targets.ibot.columns(slice(off, off + M))
            weights = targets.masked.weights_KM[k, :M]
        losses = self.objective.student_losses(
            student_global=PrototypeLogits(dino_g.view(lay.n_global, b, -1), dino_protos),
            student_local=PrototypeLogits(dino_l.view(lay.n_local, b, -1), dino_protos) if lay.n_local else None,
            dino_targets=targets.dino.columns(slice(lo, hi)),
            student_patches=sp,
            ibot_targets=it,
            masks=masks,
            mask_weights=weights,
            student_cls=cls_g.view(lay.n_global, b, -1) if b > 1 else None,
        )
        targets.terms[lo] = torch.stack([losses[k].detach().float() for k in self.loss_keys])
        return losses["total"]

    def state_dict(self, optimizer, *, with_optim=None):
        for buf in self.objective.buffers():  # softmax centers live on the last stage; every rank saves them
            dist.broadcast(buf, group=self.grad_norm_group, group_src=self.mesh.dims.pp - 1)
        return super().state_dict(optimizer, with_optim=with_optim)
