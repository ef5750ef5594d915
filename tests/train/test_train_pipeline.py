"""Pipeline-parallel Web-DINO (`fastvit train` with parallel.pp > 1) on gloo ranks against one process.

The same global batch goes through both; every loss term and the gradient norm must agree (fp32, only the
order of sums differs). KoLeo is weighted 0 here: under a pipeline it is computed within each microbatch.
"""

import pytest
import torch
from tiny import copy_run_until, merge_rank_loaders, run_metrics, tiny_config

from fastvit.testing import run_ranks
from fastvit.train.loop import train

COMPARED = ("loss", "dino_global", "dino_local", "ibot", "grad_norm")
BASE = ("objective.web_dino.koleo_weight=0", "optim.warmup_steps=1", "train.keep_checkpoints=3")
STEPS = ("train.steps=3", "train.checkpoint_every=0")


def _train_rank(rank, world_size, out, extra):
    torch.set_num_threads(1)
    train(tiny_config(out, *BASE, *extra))
    return run_metrics(out) if rank == 0 else None


def _check_same(ref, got, what, first_step=1):
    ref, got = ([r for r in rows if "loss" in r] for rows in (ref, got))  # not train.eval_every's step-0 kNN row
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(ref, got):
        if a["step"] < first_step:
            continue
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (what, a["step"], key, a[key], b[key])


@pytest.mark.multirank
def test_1f1b_matches_one_process_and_checkpoints_reshard(tmp_path):
    """pp=2 (1F1B, 8 one-image microbatches) equals one process for 4 steps; a checkpoint written at pp=2
    resumes in one process and one written by one process resumes at pp=2, with the same next steps."""
    resume = ("train.steps=4", "train.checkpoint_every=2")
    pp = ("parallel.pp=2", "parallel.pp_schedule=1f1b", *resume)
    one = tmp_path / "one"
    train(tiny_config(one, *BASE, *resume))
    ref = run_metrics(one)
    got = run_ranks(_train_rank, 2, str(tmp_path / "pp"), (*pp, "train.eval_every=4"))[0]
    _check_same(ref, got, "pp=2")
    assert 0.0 <= got[-1]["knn_top1"] <= 100.0  # the periodic kNN of the live stages
    assert ref[-1]["loss"] != ref[0]["loss"]  # the steps really trained

    copy_run_until(tmp_path / "pp", tmp_path / "pp_to_one", 2)
    train(tiny_config(tmp_path / "pp_to_one", *BASE, *resume))
    _check_same(ref, run_metrics(tmp_path / "pp_to_one"), "saved at pp=2, resumed by 1 process", first_step=3)
    copy_run_until(one, tmp_path / "one_to_pp", 2)
    resumed = run_ranks(_train_rank, 2, str(tmp_path / "one_to_pp"), pp)[0]
    _check_same(ref, resumed, "saved by 1 process, resumed at pp=2", first_step=3)


@pytest.mark.multirank
def test_interleaved_schedule_matches_one_process(tmp_path):
    """pp=2 ranks x 2 virtual stages (4 stages of one block, interleaved 1F1B, 4 microbatches), with softmax
    centering (its EMA centers live on the last stage)."""
    depth = ("model.depth=4", "objective.web_dino.centering=softmax")
    train(tiny_config(tmp_path / "one", *BASE, *STEPS, *depth))
    pp = (
        "parallel.pp=2",
        "parallel.virtual_stages=2",
        "parallel.pp_schedule=interleaved",
        "parallel.pp_microbatches=4",
        *STEPS,
        *depth,
    )
    _check_same(run_metrics(tmp_path / "one"), run_ranks(_train_rank, 2, str(tmp_path / "pp"), pp)[0], "interleaved")


@pytest.mark.multirank
def test_tp_x_pp_and_pp_x_dp_match_one_process(tmp_path, monkeypatch):
    """4 ranks: tp=2 x pp=2 with sequence parallel (both tp ranks of a stage see the whole batch; global crops
    only) and pp=2 x dp=2 (FSDP2 on each stage, Sinkhorn over both data-parallel ranks) against one process on
    the same global batch."""
    no_local = ("data.n_local_crops=0", *STEPS)
    tp_pp = (
        "parallel.tp=2",
        "parallel.pp=2",
        "parallel.sequence_parallel=true",
        "parallel.data_parallel=fsdp",
        *no_local,
    )
    got = run_ranks(_train_rank, 4, str(tmp_path / "tp_pp"), tp_pp)[0]
    pp_dp = ("parallel.pp=2", "parallel.dp=2", "parallel.data_parallel=fsdp", "parallel.pp_microbatches=2", *STEPS)
    got_dp = run_ranks(_train_rank, 4, str(tmp_path / "pp_dp"), pp_dp)[0]
    train(tiny_config(tmp_path / "one", *BASE, *no_local))
    _check_same(run_metrics(tmp_path / "one"), got, "tp=2 x pp=2")
    merge_rank_loaders(monkeypatch, 2)
    train(tiny_config(tmp_path / "one_dp2", *BASE, *STEPS))
    _check_same(run_metrics(tmp_path / "one_dp2"), got_dp, "pp=2 x dp=2")


def test_pipeline_refuses_what_it_cannot_train(tmp_path):
    """Clear errors, before anything is built: a task without a pipeline version, and gradient accumulation."""
    from types import SimpleNamespace

    from fastvit.parallel.mesh import ParallelDims
    from fastvit.train.loop import build_task, pipelined

    mesh = SimpleNamespace(dims=ParallelDims(dp=1, tp=1, pp=2))
    mae = build_task(tiny_config(tmp_path, "objective.name=web_mae"), torch.device("cpu"))
    with pytest.raises(ValueError, match="objective.name=web_dino only"):
        pipelined(mae, mesh)
    dino = build_task(tiny_config(tmp_path, "optim.grad_accum=2"), torch.device("cpu"))
    with pytest.raises(ValueError, match="parallel.pp_microbatches"):
        pipelined(dino, mesh)
