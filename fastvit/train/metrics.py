"""Step metrics: throughput, model TFLOP/s and MFU, memory; written to metrics.jsonl, TensorBoard
and the terminal (a rich progress bar when attached to one, plain lines otherwise)."""

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from fastvit.info import gpu_spec


def measure_cpu_peak_tflops(n=1024, repeats=5):
    """Best fp32 matmul rate of this CPU with torch's threads, in TFLOP/s (the CPU's MFU denominator)."""
    g = torch.Generator().manual_seed(0)  # its own generator: the training RNG must not move (exact resume)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def peak_tflops(device):
    """(peak TFLOP/s, where it came from) for the device the model runs on."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key, spec = gpu_spec(name)
        if spec is not None:
            return spec.tflops, f"table ({key} dense bf16)"
        return None, f"no peak known for {name!r}: add it to fastvit.info.GPUS"
    return measure_cpu_peak_tflops(), "measured fp32 matmul on this CPU"


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def trim_metrics(path, step):
    """Keeps the rows of metrics.jsonl up to `step` (the checkpoint a run resumes from), dropping rows logged after
    it and a line cut off by a kill, so the resumed run's rows continue without duplicates or gaps. Atomic."""
    from fastvit.fileio import write_atomic

    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    if len(kept) != len(lines):
        write_atomic(path, "".join(line + "\n" for line in kept))


class MetricsLogger:
    """Appends one JSON object per logged step to metrics.jsonl (resumed runs append) and mirrors it
    to TensorBoard and the terminal. Only rank 0 writes."""

    def __init__(self, run_dir, total_steps, enabled=True, tensorboard=True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        self.progress = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:
                self.tb = None
        if sys.stdout.isatty():
            from rich.progress import Progress

            self.progress = Progress()
            self.task = self.progress.add_task("train", total=total_steps)
            self.progress.start()

    def log(self, record):
        if not self.enabled:
            return
        # O_NOFOLLOW: a link put in the folder's place of metrics.jsonl is refused, never written through
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self.tb.add_scalar(k, v, record["step"])
        line = " ".join(_fmt(k, v) for k, v in record.items() if k in _SHOWN)
        if self.progress is not None:
            self.progress.update(self.task, completed=record["step"], description=line)
        else:
            print(line, flush=True)

    def close(self):
        if self.progress is not None:
            self.progress.stop()
        if self.tb is not None:
            self.tb.close()


_SHOWN = (
    "step",
    "loss",
    "dino_global",
    "dino_local",
    "ibot",
    "koleo",
    "lr",
    "images_per_s",
    "mfu",
    "skipped_files",
    "skipped_samples",
    "skipped_shards",
    "knn_top1",
)


def _fmt(k, v):
    if k.endswith("top1") and isinstance(v, int | float):  # accuracies are percentages (knn_top1_pct beside)
        return f"{k}={v:.1f}%"
    if isinstance(v, float):
        return f"{k}={v:.4g}"
    return f"{k}={v}"
