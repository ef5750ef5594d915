"""Step time with an asynchronous checkpoint write in flight against none, and the blocking save's time.

    python -m fastvit.benchmarks.checkpoint_overlap [RECIPE] [key=value ...] [iters=N]
    torchrun --nproc-per-node 2 -m fastvit.benchmarks.checkpoint_overlap demo parallel.data_parallel=fsdp

Runs the training step (train_step, as `fastvit bench step` does, on a synthetic batch) `iters` times with no
save, then starts an AsyncCheckpointer save (stage, then write in a thread) and runs steps until the write is
done, then times a blocking save_checkpoint of the same state. Prints one JSON object (rank 0): the median step
with no save, the median step while the write was in flight, how many steps overlapped the write, the staging
time (what the step waits for), the write's time and the blocking save's time.
"""

import json
import statistics
import sys
import tempfile
import time

import torch.distributed as dist
from fastvit.benchmarks.step import BENCH_KEYS, _batches, split_bench_args

from fastvit.config import load_config
from fastvit.train import checkpoint as ckpt
from fastvit.train.async_checkpoint import AsyncCheckpointer
from fastvit.train.loop import build_training
from fastvit.train.run import split_recipe
from fastvit.train.step import autocast_for, train_step


def _step(run, batches, i):
    t0 = time.perf_counter()
    cfg = run.cfg
    train_step(
        run.task,
        run.optimizer,
        batches,
        step=cfg.optim.warmup_steps + i,
        total=10**6,
        cfg_optim=cfg.optim,
        autocast=autocast_for(cfg, run.device),
    )
    return time.perf_counter() - t0


def measure(run, out_dir, iters):
    batches = _batches(run, real_data=False)
    for i in range(2):  # warm-up, and AdamW's state exists before the first save
        _step(run, batches, i)
    quiet = [_step(run, batches, 2 + i) for i in range(iters)]
    saver = AsyncCheckpointer()
    state = run.task.state_dict(run.optimizer)
    t0 = time.perf_counter()
    saver.save(out_dir, 1, state, {"step": 1})
    staged = time.perf_counter() - t0
    busy, i = [], 0
    while saver.in_flight:
        busy.append(_step(run, batches, 2 + iters + i))
        i += 1
    saver.wait()
    write = time.perf_counter() - t0
    t0 = time.perf_counter()
    ckpt.save_checkpoint(out_dir, 2, run.task.state_dict(run.optimizer), {"step": 2})
    blocking = time.perf_counter() - t0
    return {
        "ranks": run.world,
        "step_s_no_save": statistics.median(quiet),
        "step_s_save_in_flight": statistics.median(busy) if busy else None,
        "steps_during_write": len(busy),
        "stage_s": staged,
        "async_write_s": write,
        "blocking_save_s": blocking,
    }


def main(argv):
    bench, rest = split_bench_args(argv, BENCH_KEYS)
    recipe, overrides = split_recipe(rest)
    cfg = load_config(recipe, overrides)
    run = build_training(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = tmp
        if dist.is_initialized():  # one folder for all ranks
            box = [out]
            dist.broadcast_object_list(box)
            out = box[0]
        result = measure(run, out, bench["iters"])
    if run.rank == 0:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
