"""The training loop: build, resume, step, log, checkpoint. Read top to bottom.

The loop knows nothing of a particular objective: a task (the contract is fastvit/train/task.py; Web-DINO's
is fastvit/tasks/web_dino/task.py) owns the modules, the data, the per-step schedules of the objective, the losses
and what follows the optimizer step (the EMA teacher update); one step is fastvit/train/step.py's train_step,
which `fastvit bench step` runs too.
"""

import contextlib
import functools
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from fastvit.config import write_config
from fastvit.errors import StopRequested, UserError
from fastvit.parallel.distributed import init_distributed
from fastvit.parallel.mesh import build_mesh, resolve_dims
from fastvit.parallel.meta_init import deferred_init, defers, materialize_deferred
from fastvit.parallel.parallelize import parallelize_pair
from fastvit.tasks import spec_of
from fastvit.train import checkpoint as ckpt
from fastvit.train.async_checkpoint import AsyncCheckpointer, async_default
from fastvit.train.curves import draw_curves
from fastvit.train.init import init_task
from fastvit.train.metrics import MetricsLogger, peak_memory_gib, peak_tflops, trim_metrics
from fastvit.train.optim import build_optimizer
from fastvit.train.runlock import RunLock, check_run_folder
from fastvit.train.step import autocast_for, precision, to_device, train_step
from fastvit.train.tasks import build_task, pipelined

__all__ = ["NonFiniteLossError", "Training", "build_task", "build_training", "pipelined", "precision"]


class NonFiniteLossError(UserError, RuntimeError):
    """Too many skipped steps in a row, or weights that are not finite: the user lowers the lr or checks the data."""


def per_rank_batch(cfg, dp):
    """Micro-batch of one data-parallel rank."""
    b, accum = cfg.train.batch_size, cfg.optim.grad_accum
    if b % (dp * accum):
        raise ValueError(f"train.batch_size={b} is not divisible by data-parallel size {dp} x optim.grad_accum={accum}")
    least, why = spec_of(cfg.objective.name).min_batch_per_rank(cfg.objective.section)
    if b // (dp * accum) < least:
        raise UserError(
            f"train.batch_size={b} gives micro-batches of {b // (dp * accum)} image per rank; "
            f"objective.name={cfg.objective.name} needs {least} or more per rank: {why}"
        )
    return b // (dp * accum)


@dataclass
class Training:
    """Everything a step needs, built once: the process group, the parallel layout, the task and its optimizer."""

    cfg: object
    rank: int
    world: int
    device: torch.device
    dims: object  # ParallelDims
    mesh: object  # ParallelMesh, None in one process
    task: object  # Task
    optimizer: torch.optim.Optimizer
    batch_per_rank: int  # one micro-batch of one data-parallel rank

    @property
    def data_rank(self):
        return self.mesh.rank("dp") if self.mesh else 0

    @property
    def extra_rank(self):
        """Data position and RNG states are kept per data-parallel rank; one tensor- and pipeline-parallel rank
        writes them (the others of its group read the same batches); -1 on the others."""
        m = self.mesh
        return self.data_rank if m is None or (m.rank("tp") == 0 and m.rank("pp") == 0) else -1


def build_training(cfg, *, meta=False):
    """Initialises torch.distributed (under torchrun), builds the task on its layout, wraps it, and its optimizer.
    meta=True (fastvit train --dry-run): the modules are built on the meta device, so nothing is allocated."""
    rank, world, device = init_distributed(cfg.parallel.timeout_s)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    init = cfg.model.init and not meta and ckpt.latest_checkpoint(cfg.train.out, verify=False) is None
    with deferred_init(not meta and defers(cfg.parallel, world)):  # built on meta, each rank its shards
        task = build_task(cfg, torch.device("meta") if meta else device)
        if init:
            note = init_task(task, cfg)  # a new run only: a resumed one reads its own checkpoint
            if rank == 0:
                print(f"fastvit train: {note}", flush=True)
        dims = resolve_dims(cfg.parallel, world, task.backbone_cfg)
        b = per_rank_batch(cfg, dims.dp)  # tensor-parallel ranks share their data-parallel rank's batch
        mesh = build_mesh(dims, device.type) if world > 1 else None
        if dims.pp > 1:
            task = pipelined(task, mesh)
        task.wrap(lambda student, teacher: parallelize_pair(student, teacher, mesh, cfg.parallel))
        materialize_deferred()
    # After wrapping: FSDP2 and TP replace the parameters with DTensor ones.
    optimizer = build_optimizer(task.student.named_parameters(), task.backbone_cfg.depth, cfg.optim)
    return Training(cfg, rank, world, device, dims, mesh, task, optimizer, b)


def _rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _is_main():
    return not dist.is_initialized() or dist.get_rank() == 0


def _all_mean(t):
    """Mean over all ranks of a float tensor on the training device, read on the host (a logged line's sync)."""
    t = t.double() if t.device.type == "cpu" else t.float()
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


class _StopRequest:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint at the end of the step and exits.

    The ranks of a job get the signal at slightly different times (SLURM -> srun -> torchrun on every node), so
    they agree before acting: each step starts an asynchronous all-reduce (MAX) of the flag on a host tensor
    (gloo) and reads the one of the step before, so all ranks stop after the same step, one step after the
    first rank saw the signal, without a host stall per step."""

    def __init__(self):
        self.requested, self.signum = False, None
        self.stopped = False  # every rank agreed to stop
        self._flag = self._work = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.requested, self.signum = True, signum

    def agreed(self):
        """True once every rank knows that some rank was signalled (call once per step, on every rank)."""
        if not dist.is_initialized():
            self.stopped = self.requested
            return self.stopped
        seen = self._collect()
        self._flag = torch.tensor([float(self.requested), float(self.signum or 0)])
        self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, async_op=True)
        if seen:
            self.signum, self.stopped = self.signum or seen, True
        return self.stopped

    def _collect(self):
        if self._work is None:
            return 0
        self._work.wait()
        self._work = None
        return int(self._flag[1]) if self._flag[0] > 0 else 0

    def restore(self):
        self._collect()
        for s, h in self._old.items():
            signal.signal(s, h)


def train(cfg):
    """Runs (or resumes) the training described by `cfg`; returns the run folder."""
    if not cfg.data.source:
        raise ValueError("data.source is empty: set it, e.g. data.source=imagefolder:/data/train")
    run_dir = check_run_folder(cfg.train.out)
    ckpt.check_resume(cfg, run_dir)  # validate, then write: a refused resume leaves the folder as it was
    run = build_training(cfg)
    loader = run.task.build_loader(  # the data source is checked here, before the run folder is made
        batch_size=run.batch_per_rank, rank=run.data_rank, world_size=run.dims.dp, device=run.device
    )
    with _lock_on_rank0(run, run_dir):
        return _train_locked(run, loader, run_dir)


def _lock_on_rank0(run, run_dir):
    """Rank 0 makes the run folder and takes its lock (fastvit/train/runlock.py); when it is refused, every rank
    raises, so no rank goes on into the collectives of a run that will not start."""
    lock, refused = contextlib.nullcontext(), None
    if run.rank == 0:
        try:
            lock = RunLock(run_dir)
        except UserError as e:
            refused = e
    if dist.is_initialized():
        flag = torch.tensor([0.0 if refused is None else 1.0], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and refused is None:
            refused = UserError(f"rank 0 could not lock the run folder {run_dir}; see its message")
    if refused is not None:
        raise refused
    return lock


def _train_locked(run, loader, run_dir):
    """train() while rank 0 holds the run folder's lock: resume, write the config, step."""
    cfg = run.cfg
    start_step = _resume(run, loader, run_dir)
    if run.rank == 0:
        write_config(cfg, run_dir / "config.yaml")
        trim_metrics(run_dir / "metrics.jsonl", start_step)  # rows after the checkpoint are logged again
        vit = run.task.backbone_cfg
        print(
            f"fastvit train: {cfg.objective.name} {cfg.model.name} ({vit.width} wide, {vit.depth} blocks), "
            f"{run.world} rank(s) on {run.device}, "
            f"steps {start_step} -> {cfg.train.steps}, run folder {run_dir}",
            flush=True,
        )
    log = MetricsLogger(run_dir, cfg.train.steps, enabled=run.rank == 0)
    stop = _StopRequest()
    saver = AsyncCheckpointer() if async_default(cfg.train.async_checkpoint, run.device) else None
    try:
        _run_steps(run, loader, start_step, run_dir, log, stop, saver)
    finally:
        if saver is not None:  # the end of the run, a stop or an error: the write in flight completes first
            saver.wait()
        stop.restore()
        log.close()
    if run.rank == 0 and not stop.stopped:
        draw_curves(run_dir, ["loss" if k == "total" else k for k in run.task.loss_keys])
    if stop.stopped:  # preempted, not finished: no end-of-run evaluation, a non-zero exit
        name = signal.Signals(stop.signum).name
        raise StopRequested(f"stopped by {name} after its checkpoint; run the same command to resume", stop.signum)
    return run_dir


def _resume(run, loader, run_dir):
    """Loads the latest checkpoint of run_dir, if any, into the task, optimizer, loader and RNGs; its step."""
    latest = ckpt.latest_checkpoint(run_dir)
    if latest is None:
        return 0
    task, optimizer = run.task, run.optimizer
    state = task.state_dict(optimizer, with_optim=True)
    extra = ckpt.load_checkpoint(latest, state, extra_rank=run.data_rank)  # each rank reads its own shards
    task.load_state_dict(state, optimizer)
    extras = functools.partial(ckpt.load_all_extras, latest)  # every written rank's, read only on a new layout
    if extra is None:  # more data-parallel ranks now: the RNG of rank 0, the data position from all ranks
        extra = extras()[0]
    _set_rng_state(extra["rng"])
    try:
        loader.load_state_dict(extra["loader"], all_ranks=lambda: [e["loader"] for e in extras()])
    except ValueError as e:
        raise UserError(f"{latest}: {e}") from None
    return ckpt.step_of(latest)


def _save(run, loader, run_dir, step, saver=None):
    """Writes the checkpoint of `step` (with an AsyncCheckpointer: stages it and returns while it is written)."""
    if not _weights_finite(run.task.student):
        raise NonFiniteLossError(
            f"the weights are not finite after step {step}, so no checkpoint was written; lower optim.lr or "
            "raise optim.warmup_steps. The last checkpoint is intact."
        )
    extra = {"rng": _rng_state(), "loader": loader.state_dict(), "step": step}
    state = run.task.state_dict(run.optimizer)  # the shards as they are (fastvit.train.dcp_sharded)
    kw = {"keep": run.cfg.train.keep_checkpoints, "extra_rank": run.extra_rank}
    if saver is not None:
        return saver.save(run_dir, step, state, extra, **kw)
    return ckpt.save_checkpoint(run_dir, step, state, extra, **kw)


def _knn_live(run, run_dir, step):
    """train.eval_every: kNN top-1 of the live evaluated module (Task.live_eval_modules: the EMA teacher where
    the objective has one, else the student), on every rank (fastvit.eval.sharded), written to eval.json by rank 0; no
    checkpoint is written or read for it."""
    from fastvit.eval.sharded import knn_now
    from fastvit.fileio import update_json

    m = run.mesh
    group = m.dp.get_group() if m is not None else None
    top1 = knn_now(
        run.cfg,
        *run.task.live_eval_modules(),
        device=run.device,
        dp_rank=run.data_rank,
        dp=run.dims.dp,
        group=group,
    )
    if run.rank == 0:
        result = {"eval": "knn", "step": step, "top1": top1, "top1_pct": top1, "unit": "percent", "live": True}
        update_json(Path(run_dir) / "eval.json", "knn", result)
    return top1


class _Throughput:
    """Wall time and steps since the last logged line, and this rank's model FLOPs per step."""

    def __init__(self, run):
        cfg, dims = run.cfg, run.dims
        # this rank's share of its group's FLOPs
        self.flops = run.task.flops_per_step(run.batch_per_rank) * cfg.optim.grad_accum / (dims.tp * dims.pp)
        self.peak, _ = peak_tflops(run.device)
        self.images = cfg.train.batch_size
        self.t_last = self.t_step = time.perf_counter()
        self.steps = 0

    def step_done(self):
        self.steps, self.t_step = self.steps + 1, time.perf_counter()

    def read(self):
        """(images/s, TFLOP/s per rank, MFU) from the last read to the last step_done (checkpoints excluded)."""
        elapsed = self.t_step - self.t_last
        tflops = self.flops * self.steps / elapsed / 1e12
        rates = self.images * self.steps / elapsed, tflops, tflops / self.peak if self.peak else None
        self.t_last, self.steps = time.perf_counter(), 0
        return rates


def _record(run, out, done, throughput, loader):
    """The metrics line of step `done`: loss terms averaged over the ranks and skipped data summed (read here, on
    the host; skipped_samples / skipped_shards: the run's totals), schedules, gradient norm, throughput, memory."""
    keys = run.task.loss_keys
    counts = [out.skipped, loader.skipped_total, loader.skipped_shards]
    skipped = torch.tensor([float(c) for c in counts], device=out.terms.device)
    values = _all_mean(torch.cat([out.terms.detach(), skipped]))
    record = {"step": done, **dict(zip(keys, values[:-3]))}
    record["loss"] = record.pop("total")
    images_per_s, tflops, mfu = throughput.read()
    sched = {k: float(v) for k, v in out.sched.items()}  # 0-d tensors (CLIP's logit scale) are read here
    record.update(
        lr=out.lr,
        wd=out.wd,
        **sched,
        grad_norm=out.grad_norm,
        images_per_s=images_per_s,
        tflops=tflops,
        mfu=mfu,
        memory_gib=peak_memory_gib(run.device),
        skipped_files=round(values[-3] * run.world),
        skipped_samples=round(values[-2] * run.world),
        skipped_shards=round(values[-1] * run.world),
    )
    return record


class _NormGuard:
    """The limit on a step's gradient norm: train.max_grad_norm_jump x the running mean of the accepted steps'
    norms, once WARMUP steps were accepted (the norm is read on the host anyway: no extra sync). Ordinary
    training moves its norm by a few x; an exploding update by orders of magnitude."""

    WARMUP = 20

    def __init__(self, jump):
        self.jump, self.mean, self.n = jump, 0.0, 0

    def limit(self):
        return self.jump * self.mean if self.jump > 0 and self.n >= self.WARMUP else math.inf

    def accept(self, norm):
        self.n += 1
        self.mean += (norm - self.mean) * max(1.0 / self.n, 0.05)  # the mean, then an EMA over ~20 steps


def _skip_bad_step(cfg, step, bad_in_a_row, out, limit):
    """`step` is 1-based, as in metrics.jsonl."""
    if _is_main():
        what = (
            f"gradient norm {out.grad_norm:.3g} over {cfg.train.max_grad_norm_jump:g} x the running norm ({limit:.3g})"
            if out.exploded
            else "non-finite loss or gradient"
        )
        print(f"step {step}: {what}, step skipped ({bad_in_a_row} in a row)", flush=True)
    if bad_in_a_row >= cfg.train.max_bad_steps:
        raise NonFiniteLossError(
            f"{bad_in_a_row} consecutive steps had a non-finite loss or gradient or an exploding gradient norm "
            f"(last at step {step}); lower optim.lr, raise optim.warmup_steps or check the data. "
            "The last checkpoint is intact."
        )


def _weights_finite(model):
    """Every rank's parameters are finite (checked before a checkpoint is written, not per step)."""
    local = [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]
    ok = torch.stack([torch.isfinite(t.detach()).all() for t in local]).all().float()
    if dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _run_steps(run, loader, start_step, run_dir, log, stop, saver):
    cfg, total = run.cfg, run.cfg.train.steps
    if start_step == 0 and (total == 0 or cfg.train.checkpoint_every):
        _save(run, loader, run_dir, 0, saver)  # the initial model, so any run can be evaluated
    if start_step == 0 and cfg.train.eval_every and cfg.data.val_source:  # where the kNN curve starts
        knn = _knn_live(run, run_dir, 0)
        log.log({"step": 0, "knn_top1": knn, "knn_top1_pct": knn})
    throughput, autocast = _Throughput(run), autocast_for(cfg, run.device)
    batches = (to_device(batch, run.device) for batch in loader)
    bad_in_a_row, guard = 0, _NormGuard(cfg.train.max_grad_norm_jump)
    for step in range(start_step, total):
        limit = guard.limit()
        out = train_step(
            run.task,
            run.optimizer,
            batches,
            step=step,
            total=total,
            cfg_optim=cfg.optim,
            autocast=autocast,
            max_grad_norm=limit,
        )
        stopping = stop.agreed()
        if not out.finite:
            bad_in_a_row += 1
            _skip_bad_step(cfg, step + 1, bad_in_a_row, out, limit)
            if step + 1 == total or stopping:  # the weights are those before the skipped step
                _save(run, loader, run_dir, step + 1, saver)
                if stopping:
                    break
            continue
        bad_in_a_row = 0
        guard.accept(out.grad_norm)
        throughput.step_done()
        done = step + 1
        save = (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0) or done == total
        evaluate = bool(cfg.train.eval_every and cfg.data.val_source and done % cfg.train.eval_every == 0)
        if save or stopping:
            _save(run, loader, run_dir, done, saver)
        knn = _knn_live(run, run_dir, done) if evaluate else None
        if done % cfg.train.log_every == 0 or done == total or evaluate:
            record = _record(run, out, done, throughput, loader)
            if knn is not None:
                record["knn_top1"] = record["knn_top1_pct"] = knn  # percent (0-100), the unit of eval.json's top1
            log.log(record)
        if stopping:
            if _is_main():
                print(f"fastvit train: stop requested; checkpoint of step {done} written, exiting", flush=True)
            break
