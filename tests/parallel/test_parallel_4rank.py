"""TP=2 x DP=2 (FSDP2, packed multi-crop) and PP=2 x DP=2 on 4 gloo ranks against one process, and a
checkpoint saved at tp=2 x dp=2 that resumes at dp=4 and in one plain process with the same next loss.
Tolerance: fp32, atol 2e-5 + rtol 1e-4."""

import pytest
import torch
import torch.distributed.checkpoint as dcp
from parallel_cases import (
    ATOL,
    RTOL,
    B,
    build_pair,
    full_params,
    optimizer,
    parallel_cfg,
    pp_reference,
    pp_run,
    reference,
    state_of,
    train_step,
)
from test_parallel_2rank import check_same
from test_parallel_plan import check_within, planned
from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

from fastvit.parallel.mesh import build_mesh, resolve_dims
from fastvit.parallel.parallelize import parallelize_vit
from fastvit.parallel.plan import Layout
from fastvit.testing import assert_close, run_ranks
from fastvit.train.dcp_sharded import FusedRowsLoadPlanner, FusedRowsSavePlanner


def _setup(world, seed, **dims):
    cfg = parallel_cfg(**dims)
    mesh = build_mesh(resolve_dims(cfg, world))
    student, teacher = build_pair(seed)
    student = parallelize_vit(student, mesh, cfg)
    teacher = parallelize_vit(teacher, mesh, cfg, teacher=True)
    return mesh, student, teacher, optimizer(student)


def _rows(mesh):
    dp, r = mesh.dims.dp, mesh.rank("dp")
    return r * B // dp, (r + 1) * B // dp


def load_into(student, teacher, opt, path):
    state = state_of(student, teacher, opt)
    dcp.load(state, checkpoint_id=path, planner=FusedRowsLoadPlanner())  # each rank reads its own pieces
    set_state_dict(student, opt, model_state_dict=state["student"], optim_state_dict=state["optim"])
    set_model_state_dict(teacher, state["teacher"])


def _four_ranks(rank, world, ckpt):
    out = {}
    mesh, student, teacher, opt = _setup(world, 0, tp=2)  # dp = 2
    dp_group = mesh.dp.get_group()
    loss0, (grads, memory) = train_step(student, teacher, opt, 0, *_rows(mesh), dp_group, want_grads=True)
    dcp.save(state_of(student, teacher, opt), checkpoint_id=ckpt, planner=FusedRowsSavePlanner())
    loss1, _ = train_step(student, teacher, opt, 1, *_rows(mesh), dp_group)
    out["tp_dp"] = {"losses": torch.stack([loss0, loss1]), "grads": grads, "teacher": full_params(teacher)}
    out["memory"] = memory

    mesh, student, teacher, opt = _setup(world, 1, tp=1)  # dp = 4, different init: the load must matter
    load_into(student, teacher, opt, ckpt)
    out["dp4_next_loss"], _ = train_step(student, teacher, opt, 1, *_rows(mesh), mesh.dp.get_group())

    cfg = parallel_cfg(pp=2)
    out["pp_dp"] = pp_run(build_mesh(resolve_dims(cfg, world)), cfg, "1f1b", n_micro=2)
    return out


@pytest.mark.multirank
def test_tp_dp_pp_dp_and_resharded_resume(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    out = run_ranks(_four_ranks, 4, ckpt)
    ref, pp_ref = reference(), pp_reference()
    for rank, res in enumerate(out):
        assert_close(res["tp_dp"]["losses"], ref["losses"], atol=ATOL, rtol=RTOL, name=f"tp x dp rank {rank} losses")
        assert res["tp_dp"]["grads"].keys() == ref["grads"].keys()
        check_same(res["tp_dp"], ref, f"tp x dp rank {rank}")
        assert_close(res["dp4_next_loss"], ref["losses"][1], atol=ATOL, rtol=RTOL, name=f"dp=4 resume rank {rank}")
        assert_close(res["pp_dp"]["loss"], pp_ref["loss"], atol=ATOL, rtol=RTOL, name=f"pp x dp rank {rank} loss")
        check_same(res["pp_dp"], pp_ref, f"pp x dp rank {rank}")

    for rank, res in enumerate(out):  # planner vs the shards each rank really holds after a step
        check_within(res["memory"], planned(Layout(dp=2, tp=2, pp=1, ac="none")), f"tp=2 x dp=2 rank {rank}")

    student, teacher = build_pair(2)  # one plain process, no process group
    opt = optimizer(student)
    load_into(student, teacher, opt, ckpt)
    loss, _ = train_step(student, teacher, opt, 1)
    assert_close(loss, ref["losses"][1], atol=ATOL, rtol=RTOL, name="1-process resume")
