"""Meta-device start-up: under tp=2, under FSDP dp=2 and under pp=2 (1F1B) each rank materialises only its
shards (its pipeline stage), and the full weights (fused rows back in model order, the stages side by side)
equal a one-process start-up for the same seed, bit for bit; the teacher equals the student."""

import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from parallel_cases import gather_canonical  # noqa: E402
from tiny import tiny_config  # noqa: E402

from fastvit.parallel import meta_init  # noqa: E402
from fastvit.testing import run_ranks  # noqa: E402
from fastvit.train.loop import build_training  # noqa: E402

MODEL = ("model.mlp=swiglu", "model.heads=4", "train.seed=7")


def _full(module):
    return {n: gather_canonical(p, n).detach().clone() for n, p in module.named_parameters()}


def _build(out, *extra):
    materialized = []

    def counting(deferred):  # the parameters of each pair materialised from meta here
        materialized.append(sum(meta_init._local(p).numel() for m in deferred.students for p in m.parameters()))
        real(deferred)

    real, meta_init._materialize = meta_init._materialize, counting
    try:
        run = build_training(tiny_config(out, *MODEL, *extra))
    finally:
        meta_init._materialize = real
    sharded = any(isinstance(p, DTensor) for p in run.task.student.parameters())
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in run.task.student.parameters())
    full = {"student": _full(run.task.student), "teacher": _full(run.task.teacher)}
    return {**full, "sharded": sharded, "local": local, "deferred": materialized}


def _ranks(rank, world, out):
    torch.set_num_threads(1)
    tp = _build(out, "parallel.tp=2", "parallel.data_parallel=fsdp")
    fsdp = _build(out, "parallel.data_parallel=fsdp")
    pp = _build(out, "parallel.pp=2")  # one block per stage; the heads on the last
    return {"tp": tp, "fsdp": fsdp, "pp": pp} if rank == 0 else {"local": (tp["local"], fsdp["local"]), "pp": pp}


@pytest.mark.multirank
def test_meta_start_up_gives_the_one_process_weights(tmp_path):
    ranks = run_ranks(_ranks, 2, str(tmp_path))
    one = _build(tmp_path)
    total = sum(t.numel() for t in one["student"].values())
    assert one["deferred"] == []  # one process: materialised at once, as before
    for layout in ("tp", "fsdp"):
        got = ranks[0][layout]
        assert got["deferred"] == [got["local"]]  # built on meta, then only the rank's shards materialised
        assert got["sharded"] and got["local"] < total, layout  # each rank holds shards, not the whole model
        assert got["student"].keys() == one["student"].keys()
        for name, ref in one["student"].items():
            assert torch.equal(got["student"][name], ref), (layout, name)
            assert torch.equal(got["teacher"][name], ref), (layout, "teacher", name)
    stages = [r["pp"] for r in ranks]
    assert all(s["deferred"] == [s["local"]] and s["local"] < total for s in stages)  # each rank its stage only
    assert stages[0]["student"].keys().isdisjoint(stages[1]["student"].keys())
    for part in ("student", "teacher"):
        whole = {**stages[0][part], **stages[1][part]}
        assert whole.keys() == one["student"].keys()
        for name, ref in one["student"].items():
            assert torch.equal(whole[name], ref), ("pp", part, name)
