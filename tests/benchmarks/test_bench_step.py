"""`fastvit bench step` runs train_step for every shipped recipe (tiny model overrides on the CPU), on synthetic
or real batches, and the pipelined layout under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastvit
from fastvit.cli import main
from fastvit.config import load_config

RECIPES = sorted(p.stem for p in (Path(fastvit.__file__).parent / "recipes").glob("*.yaml"))
# Keys every recipe has: a 2-block, 64-wide ViT on 32-pixel crops, small heads and towers, fp32 on the CPU.
TINY = [
    "model.width=64",
    "model.depth=2",
    "model.heads=2",
    "model.patch_size=8",
    "model.img_size=32",
    "data.global_crops_size=32",
    "data.local_crops_size=16",
    "data.n_local_crops=2",
    "data.num_workers=0",
    "objective.web_dino.dino_out_dim=256",
    "objective.web_dino.ibot_out_dim=256",
    "objective.web_dino.head_hidden_dim=128",
    "objective.web_dino.dino_bottleneck_dim=64",
    "objective.web_dino.ibot_bottleneck_dim=64",
    "objective.web_mae.decoder_width=32",
    "objective.web_mae.decoder_depth=1",
    "objective.web_mae.decoder_heads=2",
    "objective.clip.embed_dim=32",
    "objective.clip.text_width=32",
    "objective.clip.text_depth=1",
    "objective.clip.text_heads=2",
    "objective.clip.context_length=16",
    "train.batch_size=4",
    "train.precision=fp32",
]


def _bench(tmp_path, *args):
    assert main(["bench", "step", *args, "warmup=0", "iters=1", f"out={tmp_path}"]) == 0
    return json.loads((tmp_path / "step.json").read_text())


def test_every_shipped_recipe_runs_one_step():
    assert {"demo", "demo_mae", "demo_clip", "web_dino_vit7b", "clip_vit1b", "web_mae_vit300m"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_bench_step_runs_the_recipe(tmp_path, recipe):
    out = _bench(tmp_path, recipe, *TINY)
    assert out["finite"] and out["images_per_s"] > 0 and out["flops_per_step"] > 0
    assert out["objective"] == load_config(recipe).objective.name


@pytest.mark.parametrize("recipe", ["demo", "demo_clip"])
def test_bench_step_on_real_batches(tmp_path, recipe):
    """data.source= on the command line: the recipe's loader (CLIP's captions included) instead of synthetic."""
    out = _bench(tmp_path, recipe, *TINY, "data.source=builtin")
    assert out["finite"] and out["loss"] == out["loss"]


@pytest.mark.multirank
def test_bench_step_pipelined_under_torchrun(tmp_path):
    """parallel.pp=2 on 2 gloo ranks: the pipelined Web-DINO step through the same train_step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fastvit.cli"]
    args = ["bench", "step", "demo", *TINY, "parallel.pp=2", "parallel.pp_microbatches=2"]
    proc = subprocess.run(
        [*cmd, *args, "warmup=1", "iters=1", f"out={tmp_path}"], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads((tmp_path / "step.json").read_text())
    assert out["layout"] == {"dp": 1, "tp": 1, "pp": 2, "ranks": 2}
    assert out["finite"] and out["images_per_s"] > 0
    assert "dp1 tp1 pp2" in proc.stdout
