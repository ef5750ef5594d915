"""`fastvit bench step [RECIPE] [key=value ...] [warmup=N] [iters=N] [out=DIR]`: training-step throughput.

Runs the real training step (student forward on all crops, teacher forward, losses, backward, clipping,
AdamW, EMA update) on synthetic multi-crop batches of the recipe's shapes, so the data pipeline is out of
the measurement. Prints images/s, model TFLOP/s (FLOPs from fastvit.models.flops) and MFU (against the GPU
table or, on a CPU, a measured fp32 matmul peak), and writes step.json.
"""

import json
import time
from pathlib import Path

import torch

from fastvit.config import load_config
from fastvit.data.masking import ibot_masks
from fastvit.train.loop import _autocast, _clip, build_task, per_rank_batch, precision
from fastvit.train.metrics import peak_memory_gib, peak_tflops
from fastvit.train.optim import apply_schedule, build_optimizer
from fastvit.train.run import split_recipe

BENCH_KEYS = {"warmup": 2, "iters": 5, "out": "bench_out/step"}


def synthetic_batch(cfg, batch, device, seed=0):
    """Random normalised crops and iBOT masks with the recipe's crop counts, sizes and mask settings."""
    import numpy as np

    d = cfg.data
    g = torch.Generator().manual_seed(seed)
    out = {
        "global_crops": torch.randn(d.n_global_crops * batch, 3, d.global_crops_size, d.global_crops_size, generator=g)
    }
    if d.n_local_crops:
        out["local_crops"] = torch.randn(
            d.n_local_crops * batch, 3, d.local_crops_size, d.local_crops_size, generator=g
        )
    grid = (d.global_crops_size // cfg.model.patch_size,) * 2
    masks = ibot_masks(
        np.random.default_rng(seed), d.n_global_crops * batch, grid, ratio=d.mask_ratio, prob=d.mask_probability
    )
    out["masks"] = masks["masks"]
    return {k: v.to(device) for k, v in out.items()}


def _split_args(argv):
    bench, rest = dict(BENCH_KEYS), []
    for a in argv:
        key, eq, value = a.partition("=")
        if eq and key in bench:
            bench[key] = type(BENCH_KEYS[key])(value)
        else:
            rest.append(a)
    return bench, rest


def main(argv):
    bench, rest = _split_args(argv)
    recipe, overrides = split_recipe(rest)
    cfg = load_config(recipe, overrides)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    b = per_rank_batch(cfg, 1)
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg, device)
    optimizer = build_optimizer(task.student.named_parameters(), task.backbone_cfg.depth, cfg.optim)
    batch = synthetic_batch(cfg, b, device)
    autocast = _autocast(cfg, device)
    total = bench["warmup"] + bench["iters"]
    times = []
    for step in range(total):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        apply_schedule(optimizer, cfg.optim.warmup_steps + step, cfg.optim.warmup_steps + total + 1, cfg.optim)
        sched = task.schedules(step, total)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            losses = task.losses(batch, sched)
            losses["total"].backward()
        _clip(task.student, cfg.optim.clip_grad)
        optimizer.step()
        task.after_step(sched)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times[bench["warmup"] :])[len(times[bench["warmup"] :]) // 2]  # median of the timed steps
    flops = task.flops_per_step(b)
    peak, peak_source = peak_tflops(device)
    result = {
        "model": cfg.model.name,
        "objective": cfg.objective.name,
        "batch_size": b,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision(cfg, device),
        "step_s": step_s,
        "images_per_s": b / step_s,
        "tflops": flops / step_s / 1e12,
        "mfu": flops / step_s / 1e12 / peak if peak else None,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "flops_per_step": flops,
        "memory_gib": peak_memory_gib(device),
        "loss": losses["total"].item(),
        "warmup": bench["warmup"],
        "iters": bench["iters"],
    }
    out = Path(bench["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "step.json").write_text(json.dumps(result, indent=2) + "\n")
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
    print(f"{'model':<10}{'batch':>7}{'step s':>10}{'images/s':>11}{'TFLOP/s':>10}{'MFU':>8}{'memory GiB':>12}")
    print(
        f"{cfg.model.name:<10}{b:>7}{step_s:>10.3f}{result['images_per_s']:>11.1f}{result['tflops']:>10.3f}"
        f"{mfu:>8}{result['memory_gib']:>12.2f}"
    )
    print(f"peak: {peak if peak else 'unknown'} TFLOP/s ({peak_source}); wrote {out / 'step.json'}")
    return 0
