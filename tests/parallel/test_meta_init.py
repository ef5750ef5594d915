"""Meta-device start-up: under tp=2, under FSDP dp=2 and under pp=2 (1F1B) each rank materialises only its
shards (its pipeline stage), and the full weights (fused rows back in model order, the stages side by side)
equal a one-process start-up for the same seed, bit for bit; the teacher equals the student. So too from
model.init (a native file with backbone and DINO head; the iBOT head fresh) at tp=2 and pp=2."""

import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from parallel_cases import gather_canonical  # noqa: E402
from tiny import tiny_config  # noqa: E402

from fastvit.interop import save_state_file  # noqa: E402
from fastvit.interop.heads import head_state_to_native  # noqa: E402
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


def _init_file(out):
    """A DINOv2-layout teacher file (backbone and DINO head, no iBOT head) of another seed's start-up."""
    student = build_training(tiny_config(out, *MODEL, "train.seed=3")).task.student
    state = {f"teacher.backbone.{k}": v for k, v in student.backbone.state_dict().items()}
    state.update(head_state_to_native(student.dino_head.state_dict(), "dino_head"))
    save_state_file(state, out / "init.pth")
    return f"model.init={out / 'init.pth'}"


LAYOUTS = {"tp": ("parallel.tp=2", "parallel.data_parallel=fsdp"), "fsdp": ("parallel.data_parallel=fsdp",)}
LAYOUTS["pp"] = ("parallel.pp=2",)  # one block per stage; the heads on the last


def _ranks(rank, world, out, init):
    torch.set_num_threads(1)
    got = {name: _build(out, *layout) for name, layout in LAYOUTS.items()}
    got.update({f"{name} init": _build(out, *LAYOUTS[name], init) for name in ("tp", "pp")})
    return got


@pytest.mark.multirank
def test_meta_start_up_gives_the_one_process_weights(tmp_path):
    init = _init_file(tmp_path)
    ranks = run_ranks(_ranks, 2, str(tmp_path), init)
    one, one_init = _build(tmp_path), _build(tmp_path, init)
    assert one["deferred"] == one_init["deferred"] == []  # one process: materialised at once, as before
    assert not torch.equal(one_init["student"]["backbone.cls_token"], one["student"]["backbone.cls_token"])
    assert torch.equal(one_init["student"]["ibot_head.mlp.0.weight"], one["student"]["ibot_head.mlp.0.weight"])
    for layout, ref in [(k, one) for k in LAYOUTS] + [(f"{k} init", one_init) for k in ("tp", "pp")]:
        total = sum(t.numel() for t in ref["student"].values())
        got = [r[layout] for r in ranks]
        for g in got:  # built on meta, then only the rank's shards (its stage) materialised
            assert g["deferred"] == [g["local"]] and g["local"] < total, layout
        for part in ("student", "teacher"):
            whole = {**got[0][part], **got[1][part]}  # pipeline stages side by side; else the same on both
            assert whole.keys() == ref["student"].keys()
            for name, want in ref["student"].items():
                assert torch.equal(whole[name], want), (layout, part, name)
