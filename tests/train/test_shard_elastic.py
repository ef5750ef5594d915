"""Shards resume on another data-parallel size: 2 gloo ranks -> 1 process -> 2 ranks, each resume continuing from
the global shard position with one line (rank 0's RNG state for a rank the checkpoint has none of)."""

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch
from tiny import run_metrics, tiny_config

from fastvit.testing import run_ranks
from fastvit.train.loop import train

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from shardkit import write_shards  # noqa: E402


def _cfg(out, pattern, steps):
    extra = ("data.val_source=", "data.shard_interleave=1", "data.shuffle_buffer=4", "train.checkpoint_every=1")
    return tiny_config(out, f"data.source=webdataset:{pattern}", f"train.steps={steps}", *extra)


def _train_rank(rank, world_size, out, pattern, steps):
    torch.set_num_threads(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train(_cfg(out, pattern, steps))
    return printed.getvalue()


@pytest.mark.multirank
def test_shards_resume_on_another_data_parallel_size(tmp_path, capsys):
    pattern = write_shards(tmp_path / "shards", 8, 4)
    run = str(tmp_path / "run")
    run_ranks(_train_rank, 2, run, pattern, 1)  # 2 ranks x 4 samples: one shard each, finished
    train(_cfg(run, pattern, 2))
    out = capsys.readouterr().out
    assert "data: resuming shards read by 2 rank(s) x 1 worker(s) on 1 x 1: epoch 0 continues at shard 2 of 8" in out
    assert "at most 0 sample(s) already seen can repeat" in out
    printed = run_ranks(_train_rank, 2, run, pattern, 3)[0]
    assert (
        "data: resuming shards read by 1 rank(s) x 1 worker(s) on 2 x 1: epoch 0 continues at shard 4 of 8" in printed
    )
    assert [r["step"] for r in run_metrics(run)] == [1, 2, 3]
