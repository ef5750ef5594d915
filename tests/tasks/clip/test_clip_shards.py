"""CLIP on webdataset shards streams them: nothing is read when the loader is built, and each sample's caption
comes in the batch with its image (the old start-up read every shard into memory for the captions)."""

import sys
import tarfile
from pathlib import Path

import pytest
import torch

from fastvit.config import load_config
from fastvit.data import shardio
from fastvit.train.loop import build_training
from fastvit.train.step import to_device

sys.path.insert(0, str(Path(__file__).parents[2] / "data"))
from shardkit import add, png  # noqa: E402

SMALL = ["model.width=32", "model.depth=1", "model.heads=2", "model.patch_size=8", "model.img_size=16"]
SMALL += ["data.global_crops_size=16", "objective.clip.text_width=32", "objective.clip.text_depth=1"]
SMALL += ["objective.clip.text_heads=2", "objective.clip.embed_dim=16", "data.num_workers=0"]


def captioned_shards(folder, n_shards, per_shard):
    """Shards whose sample k of shard s has label (s * per_shard + k) % 5 and the caption naming that label."""
    folder.mkdir()
    for s in range(n_shards):
        with tarfile.open(folder / f"shard-{s:06d}.tar", "w") as tar:
            for k in range(per_shard):
                label = (s * per_shard + k) % 5
                add(tar, f"{s:04d}_{k:04d}.png", png(label, k))
                add(tar, f"{s:04d}_{k:04d}.cls", str(label).encode())
                add(tar, f"{s:04d}_{k:04d}.txt", f"a picture of thing {label}".encode())
    return f"webdataset:{folder}/shard-{{000000..{n_shards - 1:06d}}}.tar"


@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_clip_on_shards_reads_nothing_at_start_up_and_captions_come_with_samples(tmp_path, monkeypatch, loader):
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    n_shards = 8
    spec = captioned_shards(tmp_path / "shards", n_shards, 4)
    opened = []
    real_open = shardio.open_shard
    monkeypatch.setattr(shardio, "open_shard", lambda path: opened.append(path) or real_open(path))
    overrides = [f"data.source={spec}", f"data.loader={loader}", "data.shuffle_buffer=4", "data.shard_interleave=2"]
    cfg = load_config("demo_clip", SMALL + overrides + [f"train.out={tmp_path / 'run'}", "train.batch_size=4"])
    run = build_training(cfg)
    batches = run.task.build_loader(batch_size=4, rank=0, world_size=1, device=run.device)
    assert opened == []  # the old CLIP start-up read all 8 shards here
    batch = to_device(next(iter(batches)), run.device)
    assert 0 < len(set(opened)) <= 3 < n_shards, sorted(set(opened))  # the shards of the first group only
    assert batch["captions"] == [f"a picture of thing {label}" for label in batch["labels"].tolist()]
    ids, eot = run.task._tokens(batch, run.device)
    expected = run.task.tokenizer.encode_batch(batch["captions"])
    assert torch.equal(ids, expected[0]) and torch.equal(eot, expected[1])
    assert torch.isfinite(run.task.losses(batch, run.task.schedules(0, 1))["total"])
