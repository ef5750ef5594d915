"""Data parallel training on 2 gloo ranks equals one process on the same global batch.

The single-process reference runs the same loop (fastvit.train.loop.train) on a loader that
merges what the two ranks' loaders yield, so each step sees exactly the two ranks' samples,
crops and iBOT masks. KoLeo is weighted 0 here: like DINOv2, it is computed within each rank's
rows, so it is not a function of the global batch.
"""

import pytest
import torch
from tiny import copy_run_until, merge_rank_loaders, run_metrics, tiny_config

from fastvit.testing import run_ranks
from fastvit.train.loop import train

COMPARED = ("loss", "dino_global", "dino_local", "ibot")
EXTRA = ("train.steps=3", "objective.web_dino.koleo_weight=0", "train.checkpoint_every=0", "optim.warmup_steps=1")


def _train_rank(rank, world_size, out, mode):
    torch.set_num_threads(1)
    train(tiny_config(out, f"parallel.data_parallel={mode}", *EXTRA))
    return run_metrics(out) if rank == 0 else None


@pytest.mark.multirank
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_on_the_same_global_batch(tmp_path, monkeypatch, mode):
    ranks = run_ranks(_train_rank, 2, str(tmp_path / "two"), mode)

    merge_rank_loaders(monkeypatch, 2)
    train(tiny_config(tmp_path / "one", *EXTRA))
    one, two = run_metrics(tmp_path / "one"), ranks[0]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        for key in COMPARED:
            # fp32; only the order of the cross-rank sums differs
            assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), (mode, a["step"], key, a[key], b[key])
    assert one[-1]["loss"] != one[0]["loss"]  # the steps really trained


def _train_tp_rank(rank, world_size, out):
    torch.set_num_threads(1)
    train(tiny_config(out, "parallel.tp=2", "parallel.data_parallel=fsdp", *RESUME))
    return run_metrics(out) if rank == 0 else None


RESUME = ("train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=3", "optim.warmup_steps=1")


@pytest.mark.multirank
def test_tensor_parallel_matches_one_process_and_checkpoints_reshard(tmp_path):
    """tp=2 on 2 ranks equals 1 process (KoLeo included: both see the whole batch); a checkpoint written at
    tp=2 resumes in 1 process and one written by 1 process resumes at tp=2, with the same next losses."""
    one = tmp_path / "one"
    train(tiny_config(one, *RESUME))
    two = tmp_path / "two"
    tp_metrics = run_ranks(_train_tp_rank, 2, str(two))[0]
    ref = run_metrics(one)
    assert [r["step"] for r in tp_metrics] == [1, 2, 3, 4]
    for a, b in zip(ref, tp_metrics):
        for key in (*COMPARED, "koleo"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), ("tp", a["step"], key, a[key], b[key])

    copy_run_until(two, tmp_path / "tp_to_one", 2)  # saved at tp=2, resumed by one process
    train(tiny_config(tmp_path / "tp_to_one", *RESUME))
    copy_run_until(one, tmp_path / "one_to_tp", 2)  # saved by one process, resumed at tp=2
    resumed_tp = run_ranks(_train_tp_rank, 2, str(tmp_path / "one_to_tp"))[0]
    for resumed in (run_metrics(tmp_path / "tp_to_one"), resumed_tp):
        assert [r["step"] for r in resumed] == [1, 2, 3, 4]
        for a, b in zip(ref[2:], resumed[2:]):
            for key in COMPARED:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), ("resume", a["step"], key)
