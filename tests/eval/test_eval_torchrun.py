"""`fastvit eval knn RUN` on 2 gloo ranks (as under torchrun): the teacher backbone is built on meta and sharded
over the ranks, each rank reads only its shards of the checkpoint (their full tensors equal the one-process
load), every rank gets the same top-1 within one image of the one-process evaluation, and rank 0 alone prints
it and writes eval.json. `fastvit train` on 2 ranks ends with the same evaluation, beside a random initialisation
that each rank materialises as its shards of the one-process random backbone. A model file exported from the run
is sharded alike on 2 ranks."""

import contextlib
import io
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
from tiny import tiny_args, tiny_config  # noqa: E402

from fastvit.eval import run as eval_run  # noqa: E402
from fastvit.testing import run_ranks  # noqa: E402
from fastvit.train import checkpoint as ckpt  # noqa: E402
from fastvit.train import run as train_run  # noqa: E402
from fastvit.train.loop import train  # noqa: E402

EVAL = ("eval.batch_size=16", "eval.max_images=60")


def _eval_rank(rank, world, run):
    torch.set_num_threads(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert eval_run.main(["knn", run, *EVAL]) == 0
    cfg = tiny_config(run, *EVAL)
    backbone = eval_run.load_sharded_backbone(cfg, ckpt.latest_checkpoint(run), torch.device("cpu"))
    params = dict(backbone.named_parameters())
    local = sum(p.to_local().numel() for p in params.values())
    full = {n: p.full_tensor() for n, p in params.items()}  # a collective: on every rank
    return {
        "printed": printed.getvalue(),
        "local": local,
        "full": full if rank == 0 else None,
        "sharded": all(isinstance(p, DTensor) for p in params.values()),
    }


@pytest.mark.multirank
def test_eval_of_a_run_on_two_ranks_reads_shards_and_matches_one_process(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=1", "train.checkpoint_every=0"))
    ranks = run_ranks(_eval_rank, 2, str(run))
    cfg = tiny_config(run, *EVAL)
    one = eval_run.evaluate_run(run, cfg, "knn")
    whole = eval_run.load_teacher_backbone(cfg, ckpt.latest_checkpoint(run))
    total = sum(p.numel() for p in whole.parameters())
    assert all(r["sharded"] and r["local"] < total for r in ranks)  # each rank holds its shards only
    assert sum(r["local"] for r in ranks) == total
    for name, p in whole.named_parameters():
        assert torch.equal(ranks[0]["full"][name], p), name
    assert ranks[1]["printed"] == ""  # rank 0 alone prints
    got = json.loads(ranks[0]["printed"])
    assert got["ranks"] == 2 and got["step"] == one["step"] == 1
    assert got["val"]["images"] == one["val"]["images"] and got["train"]["images"] == one["train"]["images"]
    assert abs(got["top1"] - one["top1"]) <= 100 / one["val"]["images"] + 1e-9, (got["top1"], one["top1"])
    # eval.json holds the last evaluation written: the one-process one, after the two ranks' (same keys)
    assert json.loads((run / "eval.json").read_text())["knn"]["top1"] == one["top1"]


TRAIN = ("train.steps=1", "train.checkpoint_every=0", "parallel.data_parallel=fsdp", *EVAL)


def _train_rank(rank, world, run):
    torch.set_num_threads(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train_run.main(tiny_args(run, *TRAIN)) == 0
    random = eval_run.random_backbone_sharded(tiny_config(run, *TRAIN), torch.device("cpu"))
    local = sum(p.to_local().numel() for p in random.parameters())
    full = {n: p.full_tensor() for n, p in random.named_parameters()}  # a collective: on every rank
    lines = printed.getvalue().strip().splitlines()
    return {"last_line": lines[-1] if lines else "", "local": local, "random": full}


@pytest.mark.multirank
def test_train_on_two_ranks_ends_with_the_sharded_evaluation(tmp_path):
    run = tmp_path / "run"
    ranks = run_ranks(_train_rank, 2, str(run))
    cfg = tiny_config(run, *TRAIN)
    one = eval_run.evaluate_run(run, cfg, "knn", compare_random_init=True)
    random = eval_run.random_backbone(cfg)
    assert sum(r["local"] for r in ranks) == sum(p.numel() for p in random.parameters())
    for name, p in random.named_parameters():
        assert torch.equal(ranks[0]["random"][name], p), name
    got = json.loads(ranks[0]["last_line"])
    assert got["ranks"] == 2 and got["step"] == one["step"] == 1 and got["curves"].endswith("curves.png")
    assert not ranks[1]["last_line"].startswith("{")  # rank 0 alone prints the result
    for key in ("top1", "top1_random_init"):
        assert abs(got[key] - one[key]) <= 100 / one["val"]["images"] + 1e-9, (key, got[key], one[key])


def _eval_model_rank(rank, world, path):
    torch.set_num_threads(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert eval_run.main(["knn", path, "model.heads=2", *EVAL]) == 0
    return printed.getvalue()


@pytest.mark.multirank
def test_eval_of_a_model_file_on_two_ranks_is_sharded_and_matches_one_process(tmp_path):
    from fastvit.cli import main as cli

    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=1", "train.checkpoint_every=0"))
    assert cli(["export", str(run), str(tmp_path / "teacher.pth")]) == 0
    printed = run_ranks(_eval_model_rank, 2, str(tmp_path / "teacher.pth"))
    one = eval_run.evaluate_model(tmp_path / "teacher.pth", "knn", ["model.heads=2", *EVAL])
    assert printed[1] == ""  # rank 0 alone prints
    got = json.loads(printed[0])
    assert got["ranks"] == 2 and "ranks" not in one and got["val"]["images"] == one["val"]["images"] > 0
    assert abs(got["top1"] - one["top1"]) <= 100 / one["val"]["images"] + 1e-9, (got["top1"], one["top1"])
