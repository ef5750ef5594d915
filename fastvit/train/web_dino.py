"""The Web-DINO student / teacher module and the pieces of one training step that are specific to it.

Student and teacher are two WebDINO modules (backbone + DINO head + iBOT head); the teacher is a
copy of the student updated by EMA. Calls go through `forward` so DDP / FSDP2 hooks see them.
"""

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from fastvit.data import MaskConfig, MultiCropConfig, build_loader
from fastvit.data.masking import ibot_masks
from fastvit.models.build import build_backbone
from fastvit.models.flops import head_flops, vit_forward_flops
from fastvit.models.heads import DINOHead, PrototypeLogits
from fastvit.objectives.teacher import ema_update_, momentum_schedule, teacher_temp_schedule
from fastvit.objectives.web_dino import WebDINOObjective
from fastvit.parallel.meta_init import build_on_meta
from fastvit.train.checkpoint import load_trainable_state, trainable_state
from fastvit.train.task import Task


class WebDINO(nn.Module):
    """backbone -> DINO head on CLS tokens, iBOT head on masked patch tokens."""

    def __init__(self, backbone, cfg_obj):
        super().__init__()
        dim = backbone.cfg.width
        self.backbone = backbone
        self.dino_head = DINOHead(dim, cfg_obj.dino_out_dim, cfg_obj.head_hidden_dim, cfg_obj.dino_bottleneck_dim)
        self.ibot_head = DINOHead(dim, cfg_obj.ibot_out_dim, cfg_obj.head_hidden_dim, cfg_obj.ibot_bottleneck_dim)

    def init_weights(self):
        self.backbone.init_weights()
        self.dino_head.init_weights()
        self.ibot_head.init_weights()

    def forward(self, global_crops, local_crops=None, masks=None, *, teacher=False):
        """global_crops (n_g*B, 3, S, S) crop-major, local_crops (n_l*B, 3, s, s) or None, masks (n_g*B, N) bool.

        The student masks its global crops' patch tokens (iBOT); the teacher sees them unmasked and
        only reads its patch outputs at the masked positions. Returns plain tensors (DDP-friendly):
        cls_g (n_g*B, D), dino_g / dino_l / ibot bottleneck features (L2-normalised), and the two
        normalised prototype matrices.
        """
        crops = [global_crops] + ([local_crops] if local_crops is not None and not teacher else [])
        in_masks = [None if teacher else masks] + [None] * (len(crops) - 1)
        outs = self.backbone(crops, in_masks)
        out = {
            "cls_g": outs[0]["cls"],
            "dino_g": self.dino_head.features(outs[0]["cls"]),
            "dino_protos": self.dino_head.prototypes(),
        }
        if len(outs) > 1:
            out["dino_l"] = self.dino_head.features(outs[1]["cls"])
        if masks is not None:
            out["ibot"] = self.ibot_head.features(outs[0]["patch"][masks])
            out["ibot_protos"] = self.ibot_head.prototypes()
        return out


def build_student_teacher(cfg, device):
    """Student and teacher WebDINO modules on `device`, initialised identically; the teacher has no grads and
    stays in eval mode (no drop path: it sees every block for every image, as in DINOv2)."""
    return build_on_meta(lambda: WebDINO(build_backbone(cfg.model), cfg.objective), device, WebDINO.init_weights)


def build_objective(cfg, group=None):
    o = cfg.objective
    return WebDINOObjective(
        n_global=cfg.data.n_global_crops,
        n_local=cfg.data.n_local_crops,
        student_temp=o.student_temp,
        dino_weight=o.dino_weight,
        ibot_weight=o.ibot_weight,
        koleo_weight=o.koleo_weight,
        centering=o.centering,
        dino_out_dim=o.dino_out_dim,
        ibot_out_dim=o.ibot_out_dim,
        backend=o.loss_backend,
        group=group,
    )


def crop_config(cfg):
    d = cfg.data
    brightness, contrast, saturation, hue = d.color_jitter
    return MultiCropConfig(
        global_size=d.global_crops_size,
        local_size=d.local_crops_size,
        n_global=d.n_global_crops,
        n_local=d.n_local_crops,
        global_scale=d.global_crops_scale,
        local_scale=d.local_crops_scale,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
        hue=hue,
        jitter_p=d.color_jitter_p,
        gray_p=d.grayscale_p,
    )


def _has_masked_patches(batch, masks):
    """Whether any patch is masked: the loader's host-side count when the batch has it (no device sync)."""
    n = batch.get("n_masked")
    return n > 0 if n is not None else bool(masks.any())


def synthetic_batch(cfg, batch, device, seed=0):
    """Random normalised crops and iBOT masks with the recipe's crop counts, sizes and mask settings."""
    d = cfg.data
    g = torch.Generator().manual_seed(seed)
    crops = lambda n, size: torch.randn(n * batch, 3, size, size, generator=g)  # noqa: E731
    out = {"global_crops": crops(d.n_global_crops, d.global_crops_size)}
    if d.n_local_crops:
        out["local_crops"] = crops(d.n_local_crops, d.local_crops_size)
    grid = (d.global_crops_size // cfg.model.patch_size,) * 2
    rng = np.random.default_rng(seed)
    masks = ibot_masks(rng, d.n_global_crops * batch, grid, ratio=d.mask_ratio, prob=d.mask_probability)
    out["masks"] = masks["masks"]
    out = {k: v.to(device) for k, v in out.items()}
    out["n_masked"] = masks["n_masked"]
    return out


def teacher_student_state(task, optimizer, with_optim=None):
    """DCP state of a Web-DINO task's student, teacher, optimizer and objective (see checkpoint.trainable_state)."""
    state = trainable_state(task.student_dp, optimizer, with_optim=with_optim)
    state["teacher"] = get_model_state_dict(task.teacher_dp)
    state["objective"] = task.objective.state_dict()
    return state


def load_teacher_student_state(task, state, optimizer):
    load_trainable_state(task.student_dp, optimizer, state)
    set_model_state_dict(task.teacher_dp, state["teacher"])
    task.objective.load_state_dict(state.get("objective", {}))  # empty (no buffers) is not saved


def compute_losses(student, teacher, objective, batch, n_global, n_local, teacher_temp):
    """Student and teacher forwards on one (micro-)batch and the objective's dict of loss terms."""
    g, masks = batch["global_crops"], batch.get("masks")
    local = batch["local_crops"] if n_local else None
    B = g.shape[0] // n_global
    s = student(g, local, masks)
    with torch.no_grad():
        t = teacher(g, None, masks, teacher=True)

    def factored(out, key, protos, n):
        feats = out[key]
        return PrototypeLogits(feats.view(n, B, -1) if n else feats, out[protos])

    has_ibot = masks is not None and _has_masked_patches(batch, masks)
    return objective(
        factored(s, "dino_g", "dino_protos", n_global),
        factored(s, "dino_l", "dino_protos", n_local) if n_local else None,
        factored(t, "dino_g", "dino_protos", n_global),
        factored(s, "ibot", "ibot_protos", 0) if has_ibot else None,
        factored(t, "ibot", "ibot_protos", 0) if has_ibot else None,
        masks,
        s["cls_g"].view(n_global, B, -1),
        teacher_temp=teacher_temp,
    )


def web_dino_flops(cfg, vit_cfg, batch_per_rank):
    """Forward + backward FLOPs of the student plus the teacher forward, for one rank's batch."""
    d, o, width = cfg.data, cfg.objective, vit_cfg.width
    crops = [(batch_per_rank * d.n_global_crops, d.global_crops_size)]
    if d.n_local_crops:
        crops.append((batch_per_rank * d.n_local_crops, d.local_crops_size))
    n_g = batch_per_rank * d.n_global_crops
    n_cls = batch_per_rank * (d.n_global_crops + d.n_local_crops)
    dino = [width, o.head_hidden_dim, o.head_hidden_dim, o.dino_bottleneck_dim, o.dino_out_dim]
    # iBOT head rows: the expected number of masked patches (it varies from batch to batch).
    n_patches = (d.global_crops_size // cfg.model.patch_size) ** 2
    n_masked = round(n_g * d.mask_probability * sum(d.mask_ratio) / 2 * n_patches)
    ibot = [width, o.head_hidden_dim, o.head_hidden_dim, o.ibot_bottleneck_dim, o.ibot_out_dim]
    heads = head_flops(n_masked, ibot)
    student = vit_forward_flops(vit_cfg, crops)["total"] + head_flops(n_cls, dino) + heads
    teacher = vit_forward_flops(vit_cfg, crops[:1])["total"] + head_flops(n_g, dino) + heads
    return 3 * student + teacher


def web_dino_loader(cfg, *, batch_size, rank, world_size, device):
    mask = MaskConfig(patch_size=cfg.model.patch_size, ratio=cfg.data.mask_ratio, prob=cfg.data.mask_probability)
    return build_loader(
        cfg.data.source,
        batch_size=batch_size,
        crops=crop_config(cfg),
        mask=mask,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
        loader=cfg.data.loader,
        num_workers=cfg.data.num_workers,
        max_pixels=cfg.data.max_pixels,
        device_id=device.index if device.type == "cuda" else None,
    )


def web_dino_schedules(cfg, step, total):
    """Logged per-step values of the objective: teacher momentum and temperature."""
    o = cfg.objective
    return {
        "momentum": momentum_schedule(step, total, o.momentum_teacher, o.momentum_teacher_final),
        "teacher_temp": teacher_temp_schedule(step, o.teacher_temp_warmup_steps, o.teacher_temp_warmup, o.teacher_temp),
    }


class WebDINOTask(Task):
    """What the generic loop needs to train Web-DINO: modules, data, per-step schedules, losses, EMA."""

    loss_keys = ("dino_global", "dino_local", "ibot", "koleo", "total")
    supports_pipeline = True

    def __init__(self, cfg, device):
        self.cfg = cfg
        self.student, self.teacher = build_student_teacher(cfg, device)
        self.objective = build_objective(cfg).to(device)  # softmax centering keeps its centers as buffers
        self.student_dp, self.teacher_dp = self.student, self.teacher

    @property
    def backbone_cfg(self):
        return self.student.backbone.cfg

    def wrap(self, wrap_fn):
        """Applies the data-parallel wrapper to student and teacher alike."""
        self.student_dp, self.teacher_dp = wrap_fn(self.student, self.teacher)

    def build_loader(self, *, batch_size, rank, world_size, device):
        return web_dino_loader(self.cfg, batch_size=batch_size, rank=rank, world_size=world_size, device=device)

    def synthetic_batch(self, batch_size, device, seed=0):
        return synthetic_batch(self.cfg, batch_size, device, seed)

    def schedules(self, step, total):
        return web_dino_schedules(self.cfg, step, total)

    def pipelined(self, mesh):
        """PipelinedWebDINOTask: student and teacher as pipeline stages over mesh.pp."""
        from fastvit.train.web_dino_pp import PipelinedWebDINOTask

        return PipelinedWebDINOTask(self, mesh)

    def losses(self, batch, sched):
        d = self.cfg.data
        return compute_losses(
            self.student_dp,
            self.teacher_dp,
            self.objective,
            batch,
            d.n_global_crops,
            d.n_local_crops,
            sched["teacher_temp"],
        )

    def after_step(self, sched):
        ema_update_(list(self.teacher.parameters()), list(self.student.parameters()), sched["momentum"])

    def flops_per_step(self, batch_per_rank):
        return web_dino_flops(self.cfg, self.backbone_cfg, batch_per_rank)

    def state_dict(self, optimizer, *, with_optim=None):
        return teacher_student_state(self, optimizer, with_optim)

    def load_state_dict(self, state, optimizer):
        load_teacher_student_state(self, state, optimizer)
