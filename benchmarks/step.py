"""`fastvit bench step [RECIPE] [key=value ...] [warmup=N] [iters=N] [out=DIR]`: training-step throughput.

Runs the training step itself (fastvit/train/step.py's train_step, the one `fastvit train` runs: every
micro-batch's forward and backward, clipping, AdamW, the EMA teacher update), for any recipe and any parallel
layout (under torchrun: parallel.dp / tp / pp, pipelined Web-DINO included), on synthetic batches of the
recipe's shapes, so the data pipeline is out of the measurement, or, with data.source=... on the command line,
on the recipe's loader's batches. Prints images/s, model TFLOP/s per rank (FLOPs from fastvit.models.flops)
and MFU (against the GPU table or, on a CPU, a measured fp32 matmul peak), and writes step.json (rank 0).
"""

import itertools
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fastvit.config import load_config
from fastvit.train.loop import build_training
from fastvit.train.metrics import peak_memory_gib, peak_tflops
from fastvit.train.run import split_recipe
from fastvit.train.step import autocast_for, precision, to_device, train_step

BENCH_KEYS = {"warmup": 2, "iters": 5, "out": "bench_out/step"}


def split_bench_args(argv, defaults):
    """({key: value} of the benchmark's own keys, typed like `defaults` and defaulting to them, the other args)."""
    bench, rest = dict(defaults), []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key in bench:
            bench[key] = type(defaults[key])(value)
        else:
            rest.append(a)
    return bench, rest


def _batches(run, real_data):
    """An endless iterator of micro-batches on the device: the loader's, or one synthetic batch repeated (the
    same on every tensor- and pipeline-parallel rank of a data-parallel rank, as a loader's are)."""
    if real_data:
        loader = run.task.build_loader(
            batch_size=run.batch_per_rank, rank=run.data_rank, world_size=run.dims.dp, device=run.device
        )
        return (to_device(b, run.device) for b in loader)
    return itertools.repeat(run.task.synthetic_batch(run.batch_per_rank, run.device, seed=run.data_rank))


def _time_steps(run, batches, warmup, iters):
    """Median seconds of the timed steps (after `warmup` untimed ones) and the last step's StepOutput."""
    cfg, device = run.cfg, run.device
    autocast = autocast_for(cfg, device)
    start, total = cfg.optim.warmup_steps, warmup + iters  # past the lr warmup: a step that really updates
    times, out = [], None
    for i in range(total):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step = start + i
        out = train_step(
            run.task, run.optimizer, batches, step=step, total=start + total + 1, cfg_optim=cfg.optim, autocast=autocast
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    timed = sorted(times[warmup:])
    return timed[len(timed) // 2], out


def _mean_over_ranks(t):
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def _result(run, step_s, out, bench):
    cfg, dims, device = run.cfg, run.dims, run.device
    # this rank's share of its group's FLOPs (tensor- and pipeline-parallel ranks split them)
    flops = run.task.flops_per_step(run.batch_per_rank) * cfg.optim.grad_accum / (dims.tp * dims.pp)
    peak, peak_source = peak_tflops(device)
    loss = _mean_over_ranks(out.terms[-1:].detach().clone())[0]
    return {
        "model": cfg.model.name,
        "objective": cfg.objective.name,
        "layout": {"dp": dims.dp, "tp": dims.tp, "pp": dims.pp, "ranks": run.world},
        "batch_size": cfg.train.batch_size,
        "batch_per_rank": run.batch_per_rank,
        "grad_accum": cfg.optim.grad_accum,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision(cfg, device),
        "step_s": step_s,
        "images_per_s": cfg.train.batch_size / step_s,
        "tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / 1e12 / peak if peak else None,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "flops_per_step": flops,
        "memory_gib": peak_memory_gib(device),
        "loss": loss,
        "finite": out.finite,
        "warmup": bench["warmup"],
        "iters": bench["iters"],
    }


def _report(result, out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step.json").write_text(json.dumps(result, indent=2) + "\n")
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
    lay = result["layout"]
    layout = f"dp{lay['dp']} tp{lay['tp']} pp{lay['pp']}"
    print(f"{'model':<10}{'objective':>10}{'layout':>14}{'batch':>7}{'step s':>10}{'images/s':>11}", end="")
    print(f"{'TFLOP/s':>10}{'MFU':>8}{'memory GiB':>12}")
    print(
        f"{result['model']:<10}{result['objective']:>10}{layout:>14}{result['batch_size']:>7}"
        f"{result['step_s']:>10.3f}{result['images_per_s']:>11.1f}{result['tflops']:>10.3f}"
        f"{mfu:>8}{result['memory_gib']:>12.2f}"
    )
    peak = result["peak_tflops"]
    print(f"peak: {peak if peak else 'unknown'} TFLOP/s ({result['peak_source']}); wrote {out / 'step.json'}")


def main(argv):
    bench, rest = split_bench_args(argv, BENCH_KEYS)
    recipe, overrides = split_recipe(rest)
    cfg = load_config(recipe, overrides)
    real_data = any(o.startswith("data.source=") for o in overrides)
    run = build_training(cfg)
    batches = _batches(run, real_data)
    step_s, out = _time_steps(run, batches, bench["warmup"], bench["iters"])
    result = _result(run, step_s, out, bench)
    if run.rank == 0:
        _report(result, bench["out"])
    return 0
