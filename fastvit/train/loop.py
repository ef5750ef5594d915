"""The training loop: build, resume, step, log, checkpoint. Read top to bottom.

The loop knows nothing of a particular objective: a task (the protocol is in fastvit/train/task.py;
Web-DINO's is fastvit/train/web_dino.py) owns the modules, the data, the per-step schedules of the
objective, the losses and what follows the optimizer step (the EMA teacher update).
"""

import contextlib
import importlib
import math
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from fastvit.config import write_config
from fastvit.parallel.distributed import init_distributed
from fastvit.parallel.mesh import build_mesh, resolve_dims
from fastvit.parallel.parallelize import parallelize_pair
from fastvit.parallel.tp import canonical_state
from fastvit.train import checkpoint as ckpt
from fastvit.train.metrics import MetricsLogger, peak_memory_gib, peak_tflops
from fastvit.train.optim import apply_schedule, build_optimizer

TASKS = {
    "web_dino": "fastvit.train.web_dino:WebDINOTask",
    "web_mae": "fastvit.train.web_mae:WebMAETask",
    "clip": "fastvit.train.clip:CLIPTask",
}


class NonFiniteLossError(RuntimeError):
    pass


def build_task(cfg, device):
    if cfg.objective.name not in TASKS:
        raise ValueError(f"objective.name={cfg.objective.name!r} has no training task; choose one of {sorted(TASKS)}")
    module, name = TASKS[cfg.objective.name].split(":")
    return getattr(importlib.import_module(module), name)(cfg, device)


def pipelined(task, mesh):
    """The pipeline-parallel version of a task (parallel.pp > 1); only Web-DINO has one."""
    if task.cfg.objective.name != "web_dino":
        raise ValueError(
            f"parallel.pp={mesh.dims.pp}: pipeline parallelism trains objective.name=web_dino only, "
            f"not {task.cfg.objective.name!r}; use parallel.tp and FSDP for it"
        )
    from fastvit.train.web_dino_pp import PipelinedWebDINOTask

    return PipelinedWebDINOTask(task, mesh)


def per_rank_batch(cfg, dp):
    """Micro-batch of one data-parallel rank."""
    b, accum = cfg.train.batch_size, cfg.optim.grad_accum
    if b % (dp * accum):
        raise ValueError(f"train.batch_size={b} is not divisible by data-parallel size {dp} x optim.grad_accum={accum}")
    return b // (dp * accum)


def _rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _is_main():
    return not dist.is_initialized() or dist.get_rank() == 0


def _all_mean(values):
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
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
    """Runs (or resumes) the training described by `cfg`; returns the run folder."""
    if not cfg.data.source:
        raise ValueError("data.source is empty: set it, e.g. data.source=imagefolder:/data/train")
    rank, world, device = init_distributed()
    run_dir = Path(cfg.train.out)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    task = build_task(cfg, device)
    dims = resolve_dims(cfg.parallel, world, task.backbone_cfg)
    b = per_rank_batch(cfg, dims.dp)  # tensor-parallel ranks share their data-parallel rank's batch
    mesh = build_mesh(dims, device.type) if world > 1 else None
    if dims.pp > 1:
        task = pipelined(task, mesh)
    task.wrap(lambda student, teacher: parallelize_pair(student, teacher, mesh, cfg.parallel))
    # After wrapping: FSDP2 and TP replace the parameters with DTensor ones.
    optimizer = build_optimizer(task.student.named_parameters(), task.backbone_cfg.depth, cfg.optim)
    data_rank = mesh.rank("dp") if mesh else 0
    loader = task.build_loader(batch_size=b, rank=data_rank, world_size=dims.dp, device=device)
    # Data position and RNG states are kept per data-parallel rank; one tensor- and pipeline-parallel rank
    # writes them (the others of its group read the same batches).
    extra_rank = data_rank if mesh is None or (mesh.rank("tp") == 0 and mesh.rank("pp") == 0) else -1

    start_step = 0
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is not None:
        state = task.state_dict(optimizer, with_optim=True)
        canon, finish = canonical_state(state)  # fused qkv / w12 rows in one layout whatever tp is
        extra = ckpt.load_checkpoint(latest, canon, extra_rank=data_rank)
        finish()
        for key in [k for k in state if k not in canon]:  # e.g. no optimizer in a step-0 checkpoint
            del state[key]
        task.load_state_dict(state, optimizer)
        if extra is None:
            raise ValueError(
                f"{latest} has no data / RNG state for data-parallel rank {data_rank}; resume with the "
                "data-parallel size it was written with"
            )
        _set_rng_state(extra["rng"])
        loader.load_state_dict(extra["loader"])
        start_step = ckpt.step_of(latest)
    if rank == 0:
        vit = task.backbone_cfg
        print(
            f"fastvit train: {cfg.objective.name} {cfg.model.name} ({vit.width} wide, {vit.depth} blocks), "
            f"{world} rank(s) on {device}, "
            f"steps {start_step} -> {cfg.train.steps}, run folder {run_dir}",
            flush=True,
        )
    log = MetricsLogger(run_dir, cfg.train.steps, enabled=rank == 0)
    stop = _StopRequest()
    try:
        _run_steps(cfg, task, optimizer, loader, start_step, b, dims, extra_rank, device, run_dir, log, stop)
    finally:
        stop.restore()
        log.close()
    return run_dir


def _save(cfg, task, optimizer, loader, run_dir, step, extra_rank):
    extra = {"rng": _rng_state(), "loader": loader.state_dict(), "step": step}
    state, _ = canonical_state(task.state_dict(optimizer))
    return ckpt.save_checkpoint(run_dir, step, state, extra, keep=cfg.train.keep_checkpoints, extra_rank=extra_rank)


def _knn_of_checkpoint(cfg, run_dir, path, device):
    """train.eval_every: kNN top-1 of the EMA teacher of checkpoint `path`, computed on rank 0 (also written to
    eval.json); the other ranks wait for it and get None."""
    from fastvit.eval.run import evaluate_run

    top1 = evaluate_run(run_dir, cfg, "knn", checkpoint=path, device=device).get("top1")
    if dist.is_initialized():
        dist.barrier()
    return top1


def _run_steps(cfg, task, optimizer, loader, start_step, batch_per_rank, dims, extra_rank, device, run_dir, log, stop):
    total, accum, world = cfg.train.steps, cfg.optim.grad_accum, dist.get_world_size() if dist.is_initialized() else 1
    if start_step == 0 and (total == 0 or cfg.train.checkpoint_every):
        _save(cfg, task, optimizer, loader, run_dir, 0, extra_rank)  # the initial model, so any run can be evaluated
    flops = task.flops_per_step(batch_per_rank) * accum / (dims.tp * dims.pp)  # this rank's share of its group's
    peak, _ = peak_tflops(device)
    autocast = _autocast(cfg, device)
    data = iter(loader)
    keys = task.loss_keys
    bad_in_a_row, t_last, steps_since = 0, time.perf_counter(), 0
    for step in range(start_step, total):
        lr, wd = apply_schedule(optimizer, step, total, cfg.optim)
        sched = task.schedules(step, total)
        optimizer.zero_grad(set_to_none=True)
        sums, skipped, finite = torch.zeros(len(keys), dtype=torch.float64), 0, True
        for micro in range(accum):
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in next(data).items()}
            skipped += int(batch.get("skipped", 0))
            sync = micro == accum - 1 or not hasattr(task.student_dp, "no_sync")  # DDP reduces on the last one
            with autocast, contextlib.nullcontext() if sync else task.student_dp.no_sync():
                pipelined = hasattr(task, "forward_backward")  # it runs its backward inside its schedule
                losses = task.forward_backward(batch, sched) if pipelined else task.losses(batch, sched)
                finite = not _any_rank(not torch.isfinite(losses["total"]).item())
                if not finite:
                    break
                if not pipelined:
                    (losses["total"] / accum).backward()
            sums += torch.tensor([losses[k].item() for k in keys], dtype=torch.float64)
        grad_norm = _clip(task.student, cfg.optim.clip_grad, getattr(task, "pp_group", None)) if finite else math.nan
        if not (finite and math.isfinite(grad_norm)):
            bad_in_a_row += 1
            optimizer.zero_grad(set_to_none=True)
            if _is_main():
                print(f"step {step}: non-finite loss or gradient, step skipped ({bad_in_a_row} in a row)", flush=True)
            if bad_in_a_row >= cfg.train.max_bad_steps:
                raise NonFiniteLossError(
                    f"{bad_in_a_row} consecutive steps had a non-finite loss or gradient (last at step {step}); "
                    "lower optim.lr, raise optim.warmup_steps or check the data. The last checkpoint is intact."
                )
            continue
        bad_in_a_row = 0
        optimizer.step()
        task.after_step(sched)
        steps_since += 1
        done, t_step = step + 1, time.perf_counter()
        save = (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0) or done == total
        evaluate = bool(cfg.train.eval_every and cfg.data.val_source and done % cfg.train.eval_every == 0)
        if save or evaluate or stop.requested:  # the periodic kNN reads the checkpoint, whatever the layout
            path = _save(cfg, task, optimizer, loader, run_dir, done, extra_rank)
        knn = _knn_of_checkpoint(cfg, run_dir, path, device) if evaluate else None
        if done % cfg.train.log_every == 0 or done == total or evaluate:
            elapsed = t_step - t_last
            values = _all_mean((sums / accum).tolist() + [float(skipped)])
            record = {"step": done, **dict(zip(keys, values[:-1]))}
            record["loss"] = record.pop("total")
            tflops = flops * steps_since / elapsed / 1e12  # per rank
            record.update(
                lr=lr,
                wd=wd,
                **sched,
                grad_norm=grad_norm,
                images_per_s=cfg.train.batch_size * steps_since / elapsed,
                tflops=tflops,
                mfu=tflops / peak if peak else None,
                memory_gib=peak_memory_gib(device),
                skipped_files=round(values[-1] * world),
            )
            if knn is not None:
                record["knn_top1"] = record["knn_top1_pct"] = knn  # percent (0-100), the unit of eval.json's top1
            log.log(record)
            t_last, steps_since = time.perf_counter(), 0
        if stop.requested:
            if _is_main():
                print(f"fastvit train: stop requested; checkpoint of step {done} written, exiting", flush=True)
            break


def _clip(model, max_norm, pp_group=None):
    """Global gradient norm, clipped to max_norm when it is > 0.

    Gradients are grouped by kind (plain tensors, and DTensors per device mesh: FSDP2 shards on the dp
    mesh, TP shards on the 2-D mesh), since foreach ops cannot mix them; each group's norm is reduced
    across its ranks before they are combined. Under pipeline parallelism each pp rank holds other
    parameters: their squared norms are summed over pp_group.
    """
    groups = {}
    for p in model.parameters():
        if p.grad is not None:
            groups.setdefault(p.grad.device_mesh if isinstance(p.grad, DTensor) else None, []).append(p)
    squares = []
    for params in groups.values():
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float() ** 2)
    total = torch.stack(squares).sum() if squares else torch.zeros(())
    if pp_group is not None:
        dist.all_reduce(total, group=pp_group)
    total = total.sqrt()
    if max_norm > 0:
        for params in groups.values():
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def precision(cfg, device):
    """ "bf16" or "fp32": train.precision, where auto is bf16 autocast on GPUs and fp32 on CPUs."""
    if cfg.train.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.train.precision


def _autocast(cfg, device):
    if precision(cfg, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)
