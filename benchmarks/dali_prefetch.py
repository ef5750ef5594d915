"""How much of the DALI loader's work overlaps the training step: time per batch, made on demand against made ahead.

    python -m fastvit.benchmarks.dali_prefetch [step_ms=100] [batch=16] [batches=12] [images=96] [repeats=3]
        [device=cpu|gpu]

Writes `images` JPEGs (480-1024 px) into a temporary folder and reads them with the DALI loader (CPU decode and the
C++ multi-crop kernel, or nvJPEG and the CUDA kernel with device=gpu; 2 x 224 + 8 x 98 crops and iBOT masks),
with data.dali_prefetch 1 (each batch made when asked for) and 2 (made ahead on a thread). Each batch is followed
by a simulated step: time.sleep(step_ms), a GPU-bound step as the host sees it (it waits, releasing the GIL).
Prints one JSON object: per depth the median (and best) seconds per batch over `repeats` interleaved runs, with no
step (the loading alone) and with the step, and the ideal figures from the on-demand loading (load + step with no
overlap, max(load, step) with full overlap), and the 1-minute load average (the machine may be shared). Nothing
is asserted.
"""

import json
import os
import statistics
import sys
import tempfile
import time

import torch
from fastvit.benchmarks.data import write_jpegs

from fastvit.data import MaskConfig, MultiCropConfig, build_loader
from fastvit.data.build import DataOptions

DEFAULTS = {"step_ms": 100, "batch": 16, "batches": 12, "images": 96, "repeats": 3, "device": "cpu"}


def seconds_per_batch(folder, depth, step_s, opts):
    device_id = torch.cuda.current_device() if opts["device"] == "gpu" else None
    loader = build_loader(
        f"imagefolder:{folder}",
        batch_size=opts["batch"],
        crops=MultiCropConfig(),
        mask=MaskConfig(patch_size=16),
        loader="dali",
        device_id=device_id,
        data=DataOptions(num_workers=0, dali_prefetch=depth),
    )
    it = iter(loader)
    next(it)  # start-up (pipeline build, first batch) excluded
    start = time.perf_counter()
    for _ in range(opts["batches"]):
        batch = next(it)
        if device_id is not None:
            batch["global_crops"].sum().item()  # the batch is ready before the step starts
        time.sleep(step_s)
    return (time.perf_counter() - start) / opts["batches"]


def main(argv):
    opts = dict(DEFAULTS)
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in DEFAULTS:
            raise ValueError(f"dali_prefetch takes key=value with keys {sorted(DEFAULTS)}, got {arg!r}")
        opts[key] = value if key == "device" else int(value)
    step_s = opts["step_ms"] / 1000
    runs = {(depth, step): [] for depth in (1, 2) for step in (0.0, step_s)}
    load_avg = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(folder, opts["images"], 480, 1024)
        for _ in range(opts["repeats"]):  # interleaved: a change in the machine's load hits every variant
            for (depth, step), times in runs.items():
                times.append(seconds_per_batch(folder, depth, step, opts))
    load_avg.append(os.getloadavg()[0])
    out = {"options": opts, "load_average_before_after": load_avg}
    for (depth, step), times in runs.items():
        key = "load_and_step_s" if step else "load_s"
        out.setdefault(f"prefetch_{depth}", {})[key] = {"median": statistics.median(times), "best": min(times)}
    load = out["prefetch_1"]["load_s"]["median"]
    out["ideal"] = {"no_overlap_s": load + step_s, "full_overlap_s": max(load, step_s)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
