"""WebDINOTask: what the generic loop needs to train Web-DINO (modules, data, per-step schedules, losses, EMA)."""

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from fastvit.data import MaskConfig, MultiCropConfig, build_loader
from fastvit.data.masking import ibot_masks
from fastvit.models.flops import head_flops, vit_forward_flops
from fastvit.models.heads import PrototypeLogits
from fastvit.objectives.teacher import ema_update_, momentum_schedule, teacher_temp_schedule
from fastvit.tasks.web_dino.model import build_student_teacher
from fastvit.tasks.web_dino.objective import WebDINOObjective
from fastvit.train.checkpoint import load_trainable_state, trainable_state
from fastvit.train.task import Task


def build_objective(cfg, group=None):
    o = cfg.objective.web_dino
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


def compute_losses(student, teacher, objective, batch, n_global, n_local, teacher_temp):
    """Student and teacher forwards on one (micro-)batch and the objective's dict of loss terms. The masked patches
    are those of the loader's host-side n_masked, mask_indices and mask_weights: static shapes, no host sync."""
    g, masks = batch["global_crops"], batch.get("masks")
    local = batch["local_crops"] if n_local else None
    B = g.shape[0] // n_global
    idx = batch.get("mask_indices")
    s = student(g, local, masks, mask_indices=idx)
    with torch.no_grad():
        t = teacher(g, None, masks, teacher=True, mask_indices=idx)

    def factored(out, key, protos, n):
        feats = out[key]
        return PrototypeLogits(feats.view(n, B, -1) if n else feats, out[protos])

    has_ibot = masks is not None and (batch["n_masked"] > 0 if "n_masked" in batch else bool(masks.any()))
    return objective(
        student_global=factored(s, "dino_g", "dino_protos", n_global),
        student_local=factored(s, "dino_l", "dino_protos", n_local) if n_local else None,
        teacher_global=factored(t, "dino_g", "dino_protos", n_global),
        student_patches=factored(s, "ibot", "ibot_protos", 0) if has_ibot else None,
        teacher_patches=factored(t, "ibot", "ibot_protos", 0) if has_ibot else None,
        masks=masks,
        mask_weights=batch.get("mask_weights"),
        student_cls=s["cls_g"].view(n_global, B, -1),
        teacher_temp=teacher_temp,
    )


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
        cfg = self.cfg
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
            data=cfg.data,
        )

    def synthetic_batch(self, batch_size, device, seed=0):
        """Random normalised crops and iBOT masks with the recipe's crop counts, sizes and mask settings."""
        d, batch = self.cfg.data, batch_size
        g = torch.Generator().manual_seed(seed)
        crops = lambda n, size: torch.randn(n * batch, 3, size, size, generator=g)  # noqa: E731
        out = {"global_crops": crops(d.n_global_crops, d.global_crops_size)}
        if d.n_local_crops:
            out["local_crops"] = crops(d.n_local_crops, d.local_crops_size)
        grid = (d.global_crops_size // self.cfg.model.patch_size,) * 2
        rng = np.random.default_rng(seed)
        masks = ibot_masks(rng, d.n_global_crops * batch, grid, ratio=d.mask_ratio, prob=d.mask_probability)
        out.update((k, masks[k]) for k in ("masks", "mask_indices", "mask_weights"))
        out = {k: v.to(device) for k, v in out.items()}
        out["n_masked"], out["mask_counts"] = masks["n_masked"], masks["mask_counts"]
        return out

    def schedules(self, step, total):
        """Logged per-step values of the objective: teacher momentum and temperature."""
        o = self.cfg.objective.web_dino
        return {
            "momentum": momentum_schedule(step, total, o.momentum_teacher, o.momentum_teacher_final),
            "teacher_temp": teacher_temp_schedule(
                step, o.teacher_temp_warmup_steps, o.teacher_temp_warmup, o.teacher_temp
            ),
        }

    def pipelined(self, mesh):
        """PipelinedWebDINOTask: student and teacher as pipeline stages over mesh.pp."""
        from fastvit.tasks.web_dino.pipelined import PipelinedWebDINOTask

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

    def live_eval_modules(self):
        return [self.teacher_dp], self.teacher.backbone

    def after_step(self, sched):
        ema_update_(list(self.teacher.parameters()), list(self.student.parameters()), sched["momentum"])

    def flops_per_step(self, batch_per_rank):
        """Forward + backward FLOPs of the student plus the teacher forward, for one rank's batch."""
        cfg, vit_cfg = self.cfg, self.backbone_cfg
        d, o, width = cfg.data, cfg.objective.web_dino, vit_cfg.width
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

    def state_dict(self, optimizer, *, with_optim=None):
        """DCP state of student, teacher, optimizer and objective (see checkpoint.trainable_state)."""
        state = trainable_state(self.student_dp, optimizer, with_optim=with_optim)
        state["teacher"] = get_model_state_dict(self.teacher_dp)
        state["objective"] = self.objective.state_dict()
        return state

    def load_state_dict(self, state, optimizer):
        load_trainable_state(self.student_dp, optimizer, state)
        set_model_state_dict(self.teacher_dp, state["teacher"])
        self.objective.load_state_dict(state.get("objective", {}))  # empty (no buffers) is not saved
