"""Sequence parallel (apply_tp(..., sequence_parallel=True)) on 2 and 4 gloo ranks against one process: the
packed multi-crop forward with a token count T that tp does not divide (21 tokens: padded) and one it does
(56), the dense path (3 images of 5 tokens, packed inside the blocks: 15 tokens), teachers without grad,
every parameter gradient (LayerNorm and LayerScale included: the classic sequence-parallel bug is to leave
their grads as per-rank partial sums), and parallelize_vit end to end: full activation checkpointing on 2
ranks; on 4 also tp=2 x dp=2 (FSDP2) and pp=2 x tp=2 (1F1B, one image per microbatch, so every stage pads).
Tolerance: fp32, atol 2e-5 + rtol 1e-4 (only summation orders differ), as in the other parallel tests."""

import dataclasses

import pytest
import torch
from parallel_cases import (
    ATOL,
    RTOL,
    B,
    batch,
    build_pair,
    dino_loss,
    full_params,
    gather_canonical,
    masks,
    optimizer,
    pp_reference,
    pp_run,
    reference,
)
from parallel_cases import parallel_cfg as base_cfg
from parallel_cases import train_step as dino_step
from test_parallel_2rank import check_same

from fastvit.parallel.mesh import build_mesh, resolve_dims
from fastvit.parallel.parallelize import parallelize_vit
from fastvit.parallel.tp import apply_tp
from fastvit.testing import assert_close, run_ranks

PACKED_T = {3: 21, B: 56}  # images -> packed tokens: 5 per global crop (CLS + 2 x 2 patches), 2 per local crop
DENSE_B = 3


def sp_cfg(**dims):
    return dataclasses.replace(base_cfg(**dims), sequence_parallel=True)


def _prepare(tp_mesh):
    """Student and eval-mode teacher (drop path set, which eval ignores), sequence parallel when tp_mesh is given;
    hooks record how many tokens reach each block's norm1 and ls2."""
    student, teacher = build_pair(0)
    for block in teacher.backbone.blocks:
        block.drop_path = 0.3
    teacher.eval()
    rows = []
    for block in student.backbone.blocks:
        for m in (block.norm1, block.ls2):
            m.register_forward_hook(lambda mod, args, out: rows.append(args[0].numel() // args[0].shape[-1]))
    if tp_mesh is not None:
        apply_tp(student.backbone.blocks, tp_mesh, sequence_parallel=True)
        apply_tp(teacher.backbone.blocks, tp_mesh, sequence_parallel=True)
    return student, teacher, rows


def _grads(model):
    return {n: gather_canonical(p.grad, n).clone() for n, p in model.named_parameters() if p.grad is not None}


def _packed(tp_mesh, images):
    student, teacher, rows = _prepare(tp_mesh)
    crops, m = batch(0, 0, images), masks(0, 0, images)
    logits = student(crops, m)
    with torch.no_grad():
        target = teacher(crops[:1])[0]
    loss = dino_loss(logits, target)
    loss.backward()
    outs = [x.detach() for x in logits] + [target]
    return {"outs": outs, "loss": loss.detach(), "grads": _grads(student), "rows": rows}


def _dense(tp_mesh):
    student, _, rows = _prepare(tp_mesh)
    out = student.backbone.forward_features(batch(1, 0, DENSE_B)[0])
    loss = out["cls"].square().sum(-1).mean() + out["patch"].sin().mean()
    loss.backward()
    outs = [out["cls"].detach(), out["patch"].detach()]
    return {"outs": outs, "loss": loss.detach(), "grads": _grads(student), "rows": rows}


def _drop_path_error(tp_mesh):
    student, _, _ = _prepare(tp_mesh)
    student.backbone.blocks[2].drop_path = 0.1
    try:
        student(batch(0, 0, 3))
    except ValueError as e:
        return str(e)
    return None


def _cases(tp_mesh):
    out = {f"packed{n}": _packed(tp_mesh, n) for n in PACKED_T}
    out["dense"] = _dense(tp_mesh)
    student, _, _ = _prepare(tp_mesh)
    out["params"] = full_params(student)  # names and canonical layouts as without sequence parallel
    if tp_mesh is not None:
        out["drop_path_error"] = _drop_path_error(tp_mesh)
    return out


def _end_to_end(world, **dims):
    """Two Web-DINO-like steps through parallelize_vit with sequence parallel and full checkpointing."""
    cfg = sp_cfg(ac="full", **dims)
    mesh = build_mesh(resolve_dims(cfg, world))
    student, teacher = build_pair(0)
    student = parallelize_vit(student, mesh, cfg)
    teacher = parallelize_vit(teacher, mesh, cfg, teacher=True)
    opt = optimizer(student)
    dp, r = mesh.dims.dp, mesh.rank("dp")
    lo, hi = r * B // dp, (r + 1) * B // dp
    losses, grads = [], None
    for step in range(2):
        loss, info = dino_step(student, teacher, opt, step, lo, hi, mesh.dp.get_group(), want_grads=step == 0)
        losses.append(loss)
        grads = grads or info[0]
    return {"losses": torch.stack(losses), "grads": grads, "teacher": full_params(teacher)}


def _pipelined(world):
    """pp=2 x tp=2, 1F1B over 8 microbatches of one image each (padded to two): dense tokens through the stages."""
    cfg = sp_cfg(pp=2, tp=2)
    return pp_run(build_mesh(resolve_dims(cfg, world)), cfg, "1f1b", n_micro=8)


def _ranks(rank, world, e2e_dims, pipelined):
    mesh = build_mesh(resolve_dims(sp_cfg(tp=world), world))
    out = {"cases": _cases(mesh.tp), "e2e": _end_to_end(world, **e2e_dims)}
    if pipelined:
        out["pp"] = _pipelined(world)
    return out


def _check_cases(cases, ref, tp, rank):
    rows = {f"packed{n}": t for n, t in PACKED_T.items()} | {"dense": DENSE_B * 5}  # tokens entering the blocks
    ln_ls = [f"backbone.blocks.{i}.{p}" for i in range(4) for p in ("norm1.weight", "norm2.bias", "ls1.gamma")]
    for case, n in rows.items():
        got, exp, what = cases[case], ref[case], f"rank {rank} {case}"
        assert exp["rows"] == [n] * 8 and got["rows"] == [-(-n // tp)] * 8, (what, got["rows"])  # 1/tp per rank
        for i, (a, e) in enumerate(zip(got["outs"], exp["outs"], strict=True)):
            assert_close(a, e, atol=ATOL, rtol=RTOL, name=f"{what} output {i}")
        assert_close(got["loss"], exp["loss"], atol=ATOL, rtol=RTOL, name=f"{what} loss")
        assert got["grads"].keys() == exp["grads"].keys() and set(ln_ls) <= got["grads"].keys()
        for name, g in got["grads"].items():
            assert_close(g, exp["grads"][name], atol=ATOL, rtol=RTOL, name=f"{what} grad {name}")
    assert cases["params"].keys() == ref["params"].keys()
    for name, p in cases["params"].items():
        assert torch.equal(p, ref["params"][name]), name
    assert "drop_path=0.1" in (cases["drop_path_error"] or ""), cases["drop_path_error"]


def _check(out, tp, e2e_what):
    ref, ref_e2e = _cases(None), reference()
    pp_ref = pp_reference() if "pp" in out[0] else None
    for rank, res in enumerate(out):
        _check_cases(res["cases"], ref, tp, rank)
        e2e = res["e2e"]
        assert_close(e2e["losses"], ref_e2e["losses"], atol=ATOL, rtol=RTOL, name=f"{e2e_what} rank {rank} losses")
        assert e2e["grads"].keys() == ref_e2e["grads"].keys()
        check_same(e2e, ref_e2e, f"{e2e_what} rank {rank}")
        if pp_ref is not None:
            assert_close(res["pp"]["loss"], pp_ref["loss"], atol=ATOL, rtol=RTOL, name=f"sp pp x tp rank {rank} loss")
            check_same(res["pp"], pp_ref, f"sp pp x tp rank {rank}")


@pytest.mark.multirank
def test_sequence_parallel_2_ranks_matches_one_process():
    _check(run_ranks(_ranks, 2, {"tp": 2}, False), tp=2, e2e_what="sp tp=2")


@pytest.mark.multirank
@pytest.mark.slow
def test_sequence_parallel_4_ranks_and_fsdp_match_one_process():
    _check(run_ranks(_ranks, 4, {"tp": 2}, True), tp=4, e2e_what="sp tp=2 x dp=2")
