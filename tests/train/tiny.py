"""A Web-DINO configuration small enough to train a few steps in seconds on a CPU."""

import json
import shutil
from pathlib import Path

import torch

from fastvit.config import load_config
from fastvit.tasks.web_dino.task import WebDINOTask
from fastvit.train import checkpoint as ckpt

TINY = [
    "model.width=64",
    "model.depth=2",
    "model.heads=2",
    "model.patch_size=8",
    "model.img_size=32",
    "data.source=builtin",
    "data.val_source=builtin:val",
    "data.num_workers=0",
    "data.n_local_crops=2",
    "data.global_crops_size=32",
    "data.local_crops_size=16",
    "objective.web_dino.dino_out_dim=256",
    "objective.web_dino.ibot_out_dim=256",
    "objective.web_dino.head_hidden_dim=128",
    "objective.web_dino.dino_bottleneck_dim=64",
    "objective.web_dino.ibot_bottleneck_dim=64",
    "objective.web_dino.teacher_temp_warmup_steps=2",
    "optim.warmup_steps=2",
    "optim.freeze_last_layer_steps=1",
    "train.batch_size=8",
    "train.log_every=1",
    "train.checkpoint_every=3",
    "train.eval_every=0",  # the demo evaluates every 50 steps; tests that want it set it
    "eval.max_images=200",
]


def tiny_args(out, *extra):
    return ["demo", *TINY, f"train.out={out}", *extra]


def tiny_config(out, *extra):
    return load_config("demo", TINY + [f"train.out={out}", *extra])


def _merge(batches, n_global, n_local):
    """One batch holding the ranks' batches side by side, keeping the crop-major row order."""

    def crop_major(key, n):
        parts = [b[key].unflatten(0, (n, -1)) for b in batches]
        return torch.cat(parts, dim=1).flatten(0, 1)

    merged = {"global_crops": crop_major("global_crops", n_global), "masks": crop_major("masks", n_global)}
    if n_local:
        merged["local_crops"] = crop_major("local_crops", n_local)
    merged["skipped"] = sum(b["skipped"] for b in batches)
    return merged


class MergedLoader:
    def __init__(self, loaders, n_global, n_local):
        self.loaders, self.n_global, self.n_local = loaders, n_global, n_local
        self.skipped_total = self.skipped_shards = 0  # the loader interface the training loop logs

    def __iter__(self):
        for batches in zip(*self.loaders):
            yield _merge(batches, self.n_global, self.n_local)

    def state_dict(self):
        return {}


def merge_rank_loaders(monkeypatch, dp):
    """Makes a one-process run read, each step, what the loaders of `dp` data-parallel ranks would yield."""
    real_build = WebDINOTask.build_loader

    def merged_loader(self, *, batch_size, rank, world_size, device):
        d = self.cfg.data
        b = batch_size // dp
        loaders = [real_build(self, batch_size=b, rank=r, world_size=dp, device=device) for r in range(dp)]
        return MergedLoader(loaders, d.n_global_crops, d.n_local_crops)

    monkeypatch.setattr(WebDINOTask, "build_loader", merged_loader)


def run_metrics(run_dir):
    """The metrics.jsonl rows of a run folder."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def copy_run_until(src, dst, step):
    """A copy of run folder `src` as it was right after its step-`step` checkpoint."""
    shutil.copytree(src, dst)
    for path in (dst / "checkpoints").glob("step_*"):
        if ckpt.step_of(path) > step:
            shutil.rmtree(path)
    (dst / "checkpoints" / "latest").write_text(f"step_{step}\n")
    rows = [line for line in (dst / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (dst / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))
