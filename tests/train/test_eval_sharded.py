"""train.eval_every on 2 FSDP ranks: every rank extracts the features of half the images from its shards of the
evaluated module (Web-DINO's teacher, Web-MAE's student), all ranks get the same kNN top-1, and it equals
`fastvit eval knn` of the final checkpoint in one process. Under a pipeline (pp=2 x dp=2, 2 virtual stages, FSDP
on each stage) the images pass through the teacher's stages on the pp ranks: the same check on 4 ranks."""

import json

import pytest
import torch
from tiny import run_metrics, tiny_config

from fastvit.config import load_config
from fastvit.eval.run import evaluate_run
from fastvit.testing import run_ranks
from fastvit.train.loop import train

RUN = ("train.steps=2", "train.eval_every=2", "parallel.data_parallel=fsdp", "eval.batch_size=16")
MAE = [
    *RUN,
    *("model.width=64", "model.depth=2", "model.heads=2", "model.img_size=32", "data.global_crops_size=32"),
    *("objective.web_mae.decoder_width=32", "objective.web_mae.decoder_depth=1", "objective.web_mae.decoder_heads=2"),
    *("data.num_workers=0", "train.batch_size=8", "train.log_every=1", "eval.max_images=60"),
]


def mae_config(out):
    return load_config("demo_mae", [*MAE, f"train.out={out}"])


def _rank(rank, world, out, objective="web_dino", extra=()):
    torch.set_num_threads(1)
    top1 = []
    import fastvit.train.loop as loop

    real = loop._knn_live

    def spy(*args):
        top1.append(real(*args))
        return top1[-1]

    loop._knn_live = spy
    train(tiny_config(out, *RUN, *extra) if objective == "web_dino" else mae_config(out))
    return top1


@pytest.mark.multirank
def test_eval_every_on_fsdp_ranks_matches_one_process(tmp_path):
    out = tmp_path / "run"
    ranks = run_ranks(_rank, 2, str(out))
    assert ranks[0] == ranks[1] and len(ranks[0]) == 2  # every rank computed the same kNN, at steps 0 and 2
    row = run_metrics(out)[-1]
    assert row["step"] == 2 and row["knn_top1"] == ranks[0][-1]
    assert json.loads((out / "eval.json").read_text())["knn"]["top1"] == ranks[0][-1]
    one = evaluate_run(out, tiny_config(out, *RUN), "knn")["top1"]  # one process, the step-2 checkpoint
    assert abs(one - ranks[0][-1]) <= 1.0, (one, ranks[0][-1])  # fp32 sums in another order: at most 1 image


@pytest.mark.multirank
def test_mae_eval_every_reads_the_live_student_on_every_rank(tmp_path):
    out = tmp_path / "run"
    ranks = run_ranks(_rank, 2, str(out), "web_mae")
    assert ranks[0] == ranks[1] and len(ranks[0]) == 2  # no checkpoint read on rank 0: every rank computed it
    knn = json.loads((out / "eval.json").read_text())["knn"]
    assert knn["live"] and knn["top1"] == ranks[0][-1] == run_metrics(out)[-1]["knn_top1"]
    one = evaluate_run(out, mae_config(out), "knn")  # one process, the step-2 checkpoint's student
    assert abs(one["top1"] - ranks[0][-1]) <= 100 / one["val"]["images"] + 1e-9, (one["top1"], ranks[0][-1])


PIPELINE = (
    *("parallel.pp=2", "parallel.dp=2", "parallel.virtual_stages=2", "parallel.pp_schedule=interleaved"),
    *("parallel.pp_microbatches=2", "model.depth=4", "objective.web_dino.koleo_weight=0"),
)


@pytest.mark.multirank
def test_eval_every_under_a_pipeline_runs_the_live_stages_on_every_rank(tmp_path):
    out = tmp_path / "run"
    ranks = run_ranks(_rank, 4, str(out), "web_dino", PIPELINE)
    assert all(r == ranks[0] for r in ranks) and len(ranks[0]) == 2  # steps 0 and 2, the same on all 4 ranks
    knn = json.loads((out / "eval.json").read_text())["knn"]
    assert knn["live"] and knn["top1"] == ranks[0][-1] == run_metrics(out)[-1]["knn_top1"]
    one = evaluate_run(out, tiny_config(out, *RUN, *PIPELINE), "knn")  # one process, the step-2 checkpoint
    assert abs(one["top1"] - ranks[0][-1]) <= 100 / one["val"]["images"] + 1e-9, (one["top1"], ranks[0][-1])
