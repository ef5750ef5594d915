"""The 7B layouts built for real on fake process groups (fastvit.parallel.dry_run): vit_7b at dp=64 (FSDP),
dp=32 x pp=2 and dp=16 x tp=2 x pp=2, vit_1b at dp=4 x tp=2, each rank's memory against the planner's columns
(start-up included: near the rank's shards on every layout, pipelines too), the local shapes of the sharded
parameters, the DCP save plan, the refusals a real run gives, `fastvit train --dry-run`, `fastvit plan verify=1`
and the SLURM script's training command."""

import re
import shlex
from pathlib import Path

import pytest

from fastvit.cli import main as cli_main
from fastvit.config import load_config
from fastvit.models.build import backbone_config
from fastvit.parallel.dry_run import compare, dry_run, format_report, parse_rank, rank_of
from fastvit.parallel.mesh import ParallelDims
from fastvit.parallel.plan import Layout, checked_memory, planned_heads

SBATCH = Path(__file__).resolve().parents[2] / "fastvit" / "recipes" / "slurm" / "web_dino_vit7b.sbatch"


def recipe(name, **parallel):
    return load_config(name, [f"parallel.{k}={v}" for k, v in parallel.items()])


def planned(cfg, layout):
    vit = backbone_config(cfg.model)
    return checked_memory(vit, planned_heads(cfg), layout)


W12_7B = 2 * 10928 * 4096 * 4  # bytes of the 7B's largest parameter (fused SwiGLU w12), the start-up temporary


def check_against_plan(cfg, layout, reports, tol=0.005):
    """The largest of each static column over the ranks within tol of the plan (which models the busiest rank);
    `fastvit plan verify=1` allows 2%. Start-up: the rank's student and teacher shards plus one full parameter."""
    plan = planned(cfg, layout)
    for key in ("params", "grads", "optim", "teacher", "fsdp_buffers", "startup"):
        built = max(r[key] for r in reports)
        assert abs(plan[key] - built) <= tol * built, f"{layout} {key}: planned {plan[key]:.4g} B, built {built:.4g} B"
    if cfg.model.name == "vit_7b":  # on meta, whatever the layout: no rank holds the whole 52.5 GB pair
        assert all(r["startup"] == r["params"] + r["teacher"] + W12_7B for r in reports), layout


def shapes(report):
    return {name.rsplit("backbone.", 1)[-1]: (full, local) for name, full, local, _ in report["shapes"]}


def test_vit7b_fsdp_over_64_ranks():
    cfg = recipe("web_dino_vit7b", dp=64)
    first, last = dry_run(cfg, 0, 64), dry_run(cfg, 63, 64, checkpoint=False)
    check_against_plan(cfg, Layout(dp=64, tp=1, pp=1, ac="full"), [first, last])
    assert first["coords"] == {"pp": 0, "dp": 0, "tp": 0} and last["coords"] == {"pp": 0, "dp": 63, "tp": 0}
    s = shapes(first)
    assert s["blocks.0.attn.qkv.weight"] == ((12288, 4096), (192, 4096))  # FSDP: rows / 64
    assert s["blocks.0.mlp.w12.weight"] == ((21856, 4096), (342, 4096))  # 21856 / 64 = 341.5: padded shards
    assert shapes(last)["blocks.0.mlp.w12.weight"][1] == (21856 - 63 * 342, 4096)
    assert first["batch"]["global_crops"] == (2 * 48, 3, 224, 224)  # 3072 / 64 images, 2 global crops each
    # the step-0 checkpoint: student, teacher, optimizer (exp_avg, exp_avg_sq, step) and objective entries
    assert first["dcp_items"] > 4 * 32 * 14 and first["dcp_bytes"] > 4 * first["params"]


def test_vit7b_dp32_pp2_first_and_last_stage():
    cfg = recipe("web_dino_vit7b", dp=32, pp=2)
    dims = ParallelDims(dp=32, tp=1, pp=2)
    first = dry_run(cfg, rank_of(dims, pp=0), 64, checkpoint=False)
    last = dry_run(cfg, rank_of(dims, pp=1, dp=5), 64)
    check_against_plan(cfg, Layout(dp=32, tp=1, pp=2, ac="full"), [first, last])
    assert first["stages"] == [0] and last["stages"] == [1] and last["coords"]["dp"] == 5
    f, la = shapes(first), shapes(last)
    assert "patch_embed.proj.weight" in f and "blocks.0.attn.qkv.weight" in f and "norm.weight" not in f
    assert "blocks.16.attn.qkv.weight" in la and "norm.weight" in la and "patch_embed.proj.weight" not in la
    assert la["blocks.16.attn.qkv.weight"] == ((12288, 4096), (384, 4096))
    assert last["params"] > first["params"]  # the heads' 131072 prototypes outweigh the embeddings
    assert last["dcp_items"] > 0 and last["dcp_bytes"] == last["state_bytes"]  # nothing gathered at save


def test_vit7b_dp16_tp2_pp2():
    cfg = recipe("web_dino_vit7b", dp=16, tp=2, pp=2)
    dims = ParallelDims(dp=16, tp=2, pp=2)
    reports = [dry_run(cfg, rank_of(dims, pp=p, tp=t), 64, checkpoint=False) for p, t in ((0, 0), (1, 1))]
    check_against_plan(cfg, Layout(dp=16, tp=2, pp=2, ac="full"), reports)
    name, full, local, placements = next(s for s in reports[1]["shapes"] if s[0].endswith("attn.qkv.weight"))
    assert (full, local) == ((12288, 4096), (12288 // 2 // 16, 4096)) and len(placements) == 2  # (dp, tp) mesh
    w3 = shapes(reports[1])["blocks.16.mlp.w3.weight"]
    assert w3 == ((4096, 10928), (4096 // 16, 10928 // 2))  # row-parallel over tp, FSDP rows over dp


def test_vit1b_tp2_on_8_ranks_and_its_checkpoint_plan():
    cfg = recipe("web_dino_vit1b", tp=2)
    r = dry_run(cfg, 3, 8)
    check_against_plan(cfg, Layout(dp=4, tp=2, pp=1, ac="selective"), [r])
    assert r["coords"] == {"pp": 0, "dp": 1, "tp": 1} and r["dims"] == ParallelDims(dp=4, tp=2, pp=1)
    assert shapes(r)["blocks.0.attn.qkv.weight"] == ((4608, 1536), (4608 // 8, 1536))
    # student, teacher, AdamW moments and steps, the objective; fused rows written as pieces of the shards: the
    # save writes exactly the rank's own bytes, nothing gathered
    assert r["dcp_items"] > 4 * 40 * 14 and r["dcp_bytes"] == r["state_bytes"] > 3.9 * r["params"]
    assert "0.00 GB of it gathered" in format_report(cfg, r)


@pytest.mark.parametrize(
    "overrides, world, message",
    [
        (["parallel.tp=3"], 6, "does not divide the 32 attention heads"),
        (["parallel.pp=3"], 6, "depth 32"),
        (["parallel.dp=8", "parallel.tp=2"], 64, "!= world size 64"),
        (["parallel.pp=2", "parallel.pp_microbatches=5"], 64, "does not split into parallel.pp_microbatches=5"),
        (["parallel.pp=2", "optim.grad_accum=2"], 64, "the pipeline already splits the batch"),
        (["train.batch_size=100"], 64, "not divisible by data-parallel size 64"),
        (["parallel.data_parallel=ddp"], 64, "dry-run parallel.data_parallel=fsdp instead"),
        (["parallel.data_parallel=ddp", "parallel.tp=2"], 64, "parallel.data_parallel='ddp' cannot be combined"),
    ],
)
def test_impossible_layouts_are_refused_as_a_real_run_refuses_them(overrides, world, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        dry_run(load_config("web_dino_vit7b", overrides), 0, world, checkpoint=False)


def test_rank_spec():
    assert parse_rank("63/64") == (63, 64)
    for bad in ("64/64", "x/8", "3", "-1/8"):
        with pytest.raises(ValueError, match="RANK/WORLD"):
            parse_rank(bad)


def test_cli_dry_run_prints_the_rank(capsys):
    assert cli_main(["train", "web_dino_vit1b", "--dry-run", "1/8", "parallel.tp=2", "model.depth=4"]) == 0
    out = capsys.readouterr().out
    assert "dry run: rank 1 of 8 (pp 0, dp 0, tp 1; stage(s) 0) of web_dino vit_1b, layout dp=4 tp=2 pp=1" in out
    assert re.search(r"GB on this rank: params \d+\.\d+, grads .*, fsdp buffers \d+\.\d+", out)
    assert "blocks.0.attn.qkv.weight: (4608, 1536) -> local (576, 1536)" in out and "DCP save plan of" in out
    assert cli_main(["train", "web_dino_vit1b", "--dry-run=8/8"]) == 2
    assert "RANK/WORLD" in capsys.readouterr().err


def test_verify_flags_a_column_off_by_more_than_2_percent():
    good = planned(load_config("web_dino_vit1b"), Layout(dp=8, tp=1, pp=1, ac="selective"))
    assert compare(good, {k: v * 1.019 for k, v in good.items()}) == []
    problems = compare(good, {**good, "optim": good["optim"] * 1.03})
    assert len(problems) == 1 and problems[0].startswith("optim: planned") and "(-2.9%)" in problems[0]


def test_plan_verify_prints_verified_lines(capsys):
    argv = ["plan", "model.name=vit_1b", "gpus=8", "gpu=h100", "train.batch_size=64", "model.drop_path=0.4"]
    assert cli_main([*argv, "verify=1"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("verified ")]
    assert len(lines) == 3
    for line in lines:
        for key in ("params", "grads", "optim", "teacher"):
            got = re.search(rf"{key} planned (\d+\.\d+) built (\d+\.\d+)", line)
            assert got and abs(float(got[1]) - float(got[2])) <= 0.02 * float(got[2]) + 0.005, line


def sbatch_train_command():
    """The sbatch script's `fastvit train ...` arguments (after the module) and its world size."""
    text = SBATCH.read_text().replace("\\\n", " ")  # continuation lines joined
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", text)[1])
    per_node = int(re.search(r"#SBATCH --gpus-per-node=(\d+)", text)[1])
    line = re.search(r" -m fastvit\.cli train (.+?)(?: &)?$", text, re.M)[1]
    return shlex.split(line), nodes * per_node


def test_the_slurm_script_saves_ahead_of_the_kill_and_requeues():
    """SIGTERM comes --signal's lead before the kill; torchrun must give the ranks' final save less than that
    before its SIGKILL, and the script requeues the job after it."""
    text = SBATCH.read_text()
    lead = int(re.search(r"#SBATCH --signal=B:TERM@(\d+)", text)[1])
    shutdown = int(re.search(r"SHUTDOWN_S=(\d+)", text)[1])
    assert 0 < shutdown < lead and '--shutdown-timeout="$SHUTDOWN_S"' in text
    assert "#SBATCH --requeue" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert re.search(r"^trap on_term TERM$", text, re.M)


def test_the_slurm_script_trains_a_layout_that_builds():
    args, world = sbatch_train_command()
    assert world == 64 and args[0] == "web_dino_vit7b"
    args = [a.replace("$DATA", "webdataset:/data/shards/{000000..000009}.tar") for a in args]
    assert cli_main(["train", *args, "--dry-run", f"{world - 1}/{world}"]) == 0
