"""The training loop: build, resume, step, log, checkpoint. Read top to bottom."""

import contextlib
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from fastvit.config import write_config
from fastvit.data import MaskConfig, MultiCropConfig, build_loader
from fastvit.models.flops import head_flops, vit_forward_flops
from fastvit.objectives.teacher import ema_update_, momentum_schedule, teacher_temp_schedule
from fastvit.parallel.data_parallel import init_distributed, wrap_data_parallel
from fastvit.train import checkpoint as ckpt
from fastvit.train.metrics import MetricsLogger, peak_memory_gib, peak_tflops
from fastvit.train.optim import apply_schedule, build_optimizer
from fastvit.train.web_dino import build_objective, build_student_teacher, compute_losses

LOSS_KEYS = ("dino_global", "dino_local", "ibot", "koleo", "total")


class NonFiniteLossError(RuntimeError):
    pass


def crop_config(cfg):
    d = cfg.data
    return MultiCropConfig(
        global_size=d.global_crops_size, local_size=d.local_crops_size, n_global=d.n_global_crops,
        n_local=d.n_local_crops, global_scale=d.global_crops_scale, local_scale=d.local_crops_scale,
    )  # fmt: skip


def mask_config(cfg):
    return MaskConfig(patch_size=cfg.model.patch_size, ratio=cfg.data.mask_ratio, prob=cfg.data.mask_probability)


def per_rank_batch(cfg, world_size):
    b, accum = cfg.train.batch_size, cfg.optim.grad_accum
    if b % (world_size * accum):
        raise ValueError(
            f"train.batch_size={b} must be divisible by world size {world_size} x optim.grad_accum={accum}"
        )
    return b // (world_size * accum)


def step_flops(backbone_cfg, cfg, batch_per_rank):
    """Forward + backward FLOPs of one student step plus the teacher forward, for one rank's micro-batch."""
    d, o = cfg.data, cfg.objective
    crops = [(batch_per_rank * d.n_global_crops, d.global_crops_size)]
    if d.n_local_crops:
        crops.append((batch_per_rank * d.n_local_crops, d.local_crops_size))
    n_cls = batch_per_rank * (d.n_global_crops + d.n_local_crops)
    dino = [backbone_cfg.width, o.head_hidden_dim, o.head_hidden_dim, o.dino_bottleneck_dim, o.dino_out_dim]
    student = vit_forward_flops(backbone_cfg, crops)["total"] + head_flops(n_cls, dino)
    teacher = vit_forward_flops(backbone_cfg, crops[:1])["total"] + head_flops(batch_per_rank * d.n_global_crops, dino)
    return 3 * student + teacher


def _rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _all_mean(values, world_size):
    t = torch.tensor(values, dtype=torch.float64)
    if world_size > 1:
        dist.all_reduce(t)
        t /= world_size
    return t.tolist()


def _any_rank(flag):
    t = torch.tensor([1.0 if flag else 0.0])
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class _StopRequest:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self):
        self.requested = False
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def train(cfg):
    """Runs (or resumes) the Web-DINO training described by `cfg`; returns the run folder."""
    if cfg.objective.name != "web_dino":
        raise ValueError(f"objective.name={cfg.objective.name!r} has no training loop yet; use web_dino")
    if not cfg.data.source:
        raise ValueError("data.source is empty: set it, e.g. data.source=imagefolder:/data/train")
    rank, world, device = init_distributed()
    run_dir = Path(cfg.train.out)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    b = per_rank_batch(cfg, world)

    student, teacher = build_student_teacher(cfg, device)
    objective = build_objective(cfg).to(device)
    depth = student.backbone.cfg.depth
    optimizer = build_optimizer(student.named_parameters(), depth, cfg.optim)
    student_dp, teacher_dp = wrap_data_parallel(student, teacher, cfg.parallel.data_parallel, device)
    loader = build_loader(
        cfg.data.source, batch_size=b, crops=crop_config(cfg), mask=mask_config(cfg), seed=cfg.train.seed,
        rank=rank, world_size=world, loader=cfg.data.loader, num_workers=cfg.data.num_workers,
        device_id=device.index if device.type == "cuda" else None,
    )  # fmt: skip

    start_step = 0
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        _load_state(latest, student_dp, teacher_dp, optimizer, loader)
        start_step = ckpt.step_of(latest)
    log = MetricsLogger(run_dir, cfg.train.steps, enabled=rank == 0)
    if rank == 0:
        print(f"fastvit train: {cfg.model.name}, {world} rank(s) on {device}, steps {start_step} -> {cfg.train.steps}",
              flush=True)  # fmt: skip
    flops = step_flops(student.backbone.cfg, cfg, b) * cfg.optim.grad_accum
    peak, _ = peak_tflops(device)
    stop = _StopRequest()
    try:
        _run_steps(cfg, start_step, student, teacher, student_dp, teacher_dp, objective, optimizer, loader, log,
                   stop, world, device, flops, peak, run_dir)  # fmt: skip
    finally:
        stop.restore()
        log.close()
    return run_dir


def _state(student_dp, teacher_dp, optimizer):
    """DCP state dict of student, teacher and optimizer (unwraps DDP, keeps FSDP2 shards as DTensors)."""
    student_sd, optim_sd = get_state_dict(student_dp, optimizer)
    return {"student": student_sd, "teacher": get_model_state_dict(teacher_dp), "optim": optim_sd}


def _save(cfg, run_dir, step, student_dp, teacher_dp, optimizer, loader):
    extra = {"rng": _rng_state(), "loader": loader.state_dict(), "step": step}
    state = _state(student_dp, teacher_dp, optimizer)
    ckpt.save_checkpoint(run_dir, step, state, extra, keep=cfg.train.keep_checkpoints)


def _load_state(path, student_dp, teacher_dp, optimizer, loader):
    state = _state(student_dp, teacher_dp, optimizer)
    extra = ckpt.load_checkpoint(path, state)
    set_state_dict(student_dp, optimizer, model_state_dict=state["student"], optim_state_dict=state["optim"])
    set_model_state_dict(teacher_dp, state["teacher"])
    if extra is None:
        raise ValueError(f"{path} holds no data-loader / RNG state for this rank; resume with the same world size")
    _set_rng_state(extra["rng"])
    loader.load_state_dict(extra["loader"])


def _run_steps(cfg, start_step, student, teacher, student_dp, teacher_dp, objective, optimizer, loader, log, stop,
               world, device, flops, peak, run_dir):  # fmt: skip
    total = cfg.train.steps
    accum = cfg.optim.grad_accum
    o = cfg.objective
    if start_step == 0 and (total == 0 or cfg.train.checkpoint_every):
        _save(cfg, run_dir, 0, student_dp, teacher_dp, optimizer, loader)
    autocast = _autocast(cfg, device)
    data = iter(loader)
    bad_in_a_row, t_last, images_since = 0, time.perf_counter(), 0
    for step in range(start_step, total):
        lr, wd = apply_schedule(optimizer, step, total, cfg.optim)
        momentum = momentum_schedule(step, total, o.momentum_teacher, o.momentum_teacher_final)
        teacher_temp = teacher_temp_schedule(step, o.teacher_temp_warmup_steps, o.teacher_temp_warmup, o.teacher_temp)
        optimizer.zero_grad(set_to_none=True)
        sums, skipped, finite = torch.zeros(len(LOSS_KEYS), dtype=torch.float64), 0, True
        for micro in range(accum):
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in next(data).items()}
            skipped += int(batch.get("skipped", 0))
            # DDP all-reduces gradients on the last micro-batch only.
            sync = micro == accum - 1 or not hasattr(student_dp, "no_sync")
            with autocast, contextlib.nullcontext() if sync else student_dp.no_sync():
                losses = compute_losses(student_dp, teacher_dp, objective, batch, cfg.data.n_global_crops,
                                        cfg.data.n_local_crops, teacher_temp)  # fmt: skip
                if _any_rank(not torch.isfinite(losses["total"]).item()):
                    finite = False
                    break
                (losses["total"] / accum).backward()
            sums += torch.tensor([losses[k].item() for k in LOSS_KEYS], dtype=torch.float64)
        grad_norm = _clip(student, cfg.optim.clip_grad) if finite else float("nan")
        if finite and not math.isfinite(grad_norm):
            finite = False
        if not finite:
            bad_in_a_row += 1
            optimizer.zero_grad(set_to_none=True)
            if not dist.is_initialized() or dist.get_rank() == 0:
                print(f"step {step}: non-finite loss or gradient, step skipped ({bad_in_a_row} in a row)", flush=True)
            if bad_in_a_row >= cfg.train.max_bad_steps:
                raise NonFiniteLossError(
                    f"{bad_in_a_row} consecutive steps had a non-finite loss or gradient (last at step {step}); "
                    "lower optim.lr, raise optim.warmup_steps or check the data. The last checkpoint is intact."
                )
            continue
        bad_in_a_row = 0
        optimizer.step()
        ema_update_(list(teacher.parameters()), list(student.parameters()), momentum)
        images_since += cfg.train.batch_size
        done = step + 1
        if done % cfg.train.log_every == 0 or done == total:
            elapsed = time.perf_counter() - t_last
            values = _all_mean((sums / accum).tolist() + [float(skipped)], world)
            record = {"step": done, **dict(zip(LOSS_KEYS, values[:-1]))}
            record["loss"] = record.pop("total")
            ips = images_since / elapsed
            tflops = flops * world * (images_since / cfg.train.batch_size) / elapsed / 1e12
            record.update(
                lr=lr, wd=wd, momentum=momentum, teacher_temp=teacher_temp, grad_norm=grad_norm,
                images_per_s=ips, tflops=tflops / world, mfu=(tflops / world / peak) if peak else None,
                memory_gib=peak_memory_gib(device), skipped_files=int(values[-1] * world),
            )  # fmt: skip
            log.log(record)
            t_last, images_since = time.perf_counter(), 0
        if (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0) or done == total or stop.requested:
            _save(cfg, run_dir, done, student_dp, teacher_dp, optimizer, loader)
        if stop.requested:
            print(f"fastvit train: stop requested, checkpoint at step {done} written; exiting", flush=True)
            break


def _clip(model, max_norm):
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params]))


def _autocast(cfg, device):
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)

