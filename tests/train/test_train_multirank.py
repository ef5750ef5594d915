"""Data parallel training on 2 gloo ranks equals one process on the same global batch.

The single-process reference runs the same loop (fastvit.train.loop.train) on a loader that
merges what the two ranks' loaders yield, so each step sees exactly the two ranks' samples,
crops and iBOT masks. KoLeo is weighted 0 here: like DINOv2, it is computed within each rank's
rows, so it is not a function of the global batch.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import merge_rank_loaders, tiny_config

from fastvit.testing import run_ranks
from fastvit.train import checkpoint as ckpt
from fastvit.train.loop import train

COMPARED = ("loss", "dino_global", "dino_local", "ibot")
EXTRA = ("train.steps=3", "objective.koleo_weight=0", "train.checkpoint_every=0", "optim.warmup_steps=1")


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _train_rank(rank, world_size, out, mode):
    torch.set_num_threads(1)
    train(tiny_config(out, f"parallel.data_parallel={mode}", *EXTRA))
    return _metrics(out) if rank == 0 else None


@pytest.mark.multirank
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_on_the_same_global_batch(tmp_path, monkeypatch, mode):
    ranks = run_ranks(_train_rank, 2, str(tmp_path / "two"), mode)

    merge_rank_loaders(monkeypatch, 2)
    train(tiny_config(tmp_path / "one", *EXTRA))
    one, two = _metrics(tmp_path / "one"), ranks[0]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        for key in COMPARED:
            # fp32; only the order of the cross-rank sums differs
            assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), (mode, a["step"], key, a[key], b[key])
    assert one[-1]["loss"] != one[0]["loss"]  # the steps really trained


def _copy_until(src, dst, step):
    """A copy of run folder `src` as it was right after its step-`step` checkpoint."""
    shutil.copytree(src, dst)
    for path in (dst / "checkpoints").glob("step_*"):
        if ckpt.step_of(path) > step:
            shutil.rmtree(path)
    (dst / "checkpoints" / "latest").write_text(f"step_{step}\n")
    rows = [line for line in (dst / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (dst / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))


def _train_tp_rank(rank, world_size, out):
    torch.set_num_threads(1)
    train(tiny_config(out, "parallel.tp=2", "parallel.data_parallel=fsdp", *RESUME))
    return _metrics(out) if rank == 0 else None


RESUME = ("train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=3", "optim.warmup_steps=1")


@pytest.mark.multirank
def test_tensor_parallel_matches_one_process_and_checkpoints_reshard(tmp_path):
    """tp=2 on 2 ranks equals 1 process (KoLeo included: both see the whole batch); a checkpoint written at
    tp=2 resumes in 1 process and one written by 1 process resumes at tp=2, with the same next losses."""
    one = tmp_path / "one"
    train(tiny_config(one, *RESUME))
    two = tmp_path / "two"
    tp_metrics = run_ranks(_train_tp_rank, 2, str(two))[0]
    ref = _metrics(one)
    assert [r["step"] for r in tp_metrics] == [1, 2, 3, 4]
    for a, b in zip(ref, tp_metrics):
        for key in (*COMPARED, "koleo"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), ("tp", a["step"], key, a[key], b[key])

    _copy_until(two, tmp_path / "tp_to_one", 2)  # saved at tp=2, resumed by one process
    train(tiny_config(tmp_path / "tp_to_one", *RESUME))
    _copy_until(one, tmp_path / "one_to_tp", 2)  # saved by one process, resumed at tp=2
    resumed_tp = run_ranks(_train_tp_rank, 2, str(tmp_path / "one_to_tp"))[0]
    for resumed in (_metrics(tmp_path / "tp_to_one"), resumed_tp):
        assert [r["step"] for r in resumed] == [1, 2, 3, 4]
        for a, b in zip(ref[2:], resumed[2:]):
            for key in COMPARED:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), ("resume", a["step"], key)
