"""train.precision=bf16 on the CPU: the loop runs every forward and backward under torch.autocast("cpu", bf16).

Web-DINO, Web-MAE and CLIP each train 3 steps at bf16 and at fp32 from the same seed: every logged loss is finite
and within BF16_RTOL (relative, per term) + BF16_ATOL of the fp32 run. Every shipped bf16 recipe (the web_dino_*,
web_mae_* and clip_* rows) runs one step with a tiny model, keeping its own objective, MLP, LayerScale, drop path
and activation checkpointing. Tiny models: a CPU has no bf16 matrix hardware, so bf16 matmuls are slow there.
"""

import math
from pathlib import Path

import pytest
import torch
from tiny import run_metrics

import fastvit
from fastvit import ops
from fastvit.config import load_config
from fastvit.train.loop import train

# A bf16 value carries 8 significant bits (relative spacing 2**-8 ~ 0.4%); over 3 steps of a tiny model the loss
# terms stay within 4 such steps of fp32 (measured: <= 0.4%). KoLeo, -log of the distance between an image's CLS
# feature and its nearest neighbour's, is ill-conditioned at initialisation, where the CLS features of different
# images nearly coincide and bf16 rounding is a sizeable part of their differences (measured: up to 1.3%).
BF16_RTOL = {"koleo": 16 * 2**-8}
BF16_RTOL_DEFAULT = 4 * 2**-8
BF16_ATOL = 1e-3

TINY_MODEL = [
    "model.width=64",
    "model.depth=2",
    "model.heads=2",
    "model.patch_size=8",
    "model.img_size=32",
    "data.source=builtin",
    "data.val_source=",
    "data.num_workers=0",
    "data.global_crops_size=32",
    "train.log_every=1",
    "train.checkpoint_every=0",
]
TINY_OBJECTIVE = {
    "web_dino": [
        "data.n_local_crops=2",
        "data.local_crops_size=16",
        "objective.web_dino.dino_out_dim=128",
        "objective.web_dino.ibot_out_dim=128",
        "objective.web_dino.head_hidden_dim=64",
        "objective.web_dino.dino_bottleneck_dim=32",
        "objective.web_dino.ibot_bottleneck_dim=32",
    ],
    "web_mae": [
        "objective.web_mae.decoder_width=32",
        "objective.web_mae.decoder_depth=1",
        "objective.web_mae.decoder_heads=2",
    ],
    "clip": [
        "objective.clip.embed_dim=16",
        "objective.clip.text_width=32",
        "objective.clip.text_depth=1",
        "objective.clip.text_heads=2",  # the recipe's 32-token context: whole captions (16 cut them to near-duplicates)
    ],
}
DEMOS = {"web_dino": "demo", "web_mae": "demo_mae", "clip": "demo_clip"}
LOSS_KEYS = {
    "web_dino": ("loss", "dino_global", "dino_local", "ibot", "koleo"),
    "web_mae": ("loss",),
    "clip": ("loss",),
}
RECIPES = sorted(
    p.stem for p in (Path(fastvit.__file__).parent / "recipes").glob("*.yaml") if p.stem not in DEMOS.values()
)


@pytest.fixture(autouse=True)
def _no_cpu_peak_probe(monkeypatch):
    """The loop times a 1024^3 fp32 matmul per run for the MFU column (~1 s on 2 threads, unused here)."""
    monkeypatch.setattr("fastvit.train.metrics.measure_cpu_peak_tflops", lambda: 1.0)


@pytest.fixture
def attention_calls(monkeypatch):
    """(autocast dtype or None, q dtype) of every fastvit.ops.attention call (every image tower calls it)."""
    calls, real = [], ops.attention

    def spy(q, k, v, **kw):
        calls.append((torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None, q.dtype))
        return real(q, k, v, **kw)

    monkeypatch.setattr(ops, "attention", spy)
    return calls


def _run(recipe, objective, out, *extra):
    cfg = load_config(recipe, [*TINY_MODEL, *TINY_OBJECTIVE[objective], f"train.out={out}", *extra])
    assert cfg.objective.name == objective
    return run_metrics(train(cfg))


@pytest.mark.parametrize("objective", ["web_dino", "web_mae", "clip"])
def test_bf16_training_tracks_fp32(objective, tmp_path, attention_calls):
    common = ("train.steps=3", "train.batch_size=4", "optim.warmup_steps=1")
    fp32 = _run(DEMOS[objective], objective, tmp_path / "fp32", *common, "train.precision=fp32")
    assert attention_calls and set(attention_calls) == {(None, torch.float32)}
    attention_calls.clear()
    bf16 = _run(DEMOS[objective], objective, tmp_path / "bf16", *common, "train.precision=bf16")
    assert attention_calls and set(attention_calls) == {(torch.bfloat16, torch.bfloat16)}, set(attention_calls)
    assert [r["step"] for r in bf16] == [r["step"] for r in fp32] == [1, 2, 3]
    for lo, hi in zip(bf16, fp32):
        assert math.isfinite(lo["grad_norm"]), lo
        for key in LOSS_KEYS[objective]:
            assert math.isfinite(lo[key]), (key, lo)
            rtol = BF16_RTOL.get(key, BF16_RTOL_DEFAULT)
            assert abs(lo[key] - hi[key]) <= rtol * abs(hi[key]) + BF16_ATOL, (
                f"step {lo['step']} {key}: bf16 {lo[key]:.6g} vs fp32 {hi[key]:.6g}"
            )


@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_bf16_recipe_runs_a_step_on_the_cpu(recipe, tmp_path, attention_calls):
    cfg = load_config(recipe, [])
    assert cfg.train.precision == "bf16", f"{recipe} sets train.precision={cfg.train.precision!r}"
    rows = _run(recipe, cfg.objective.name, tmp_path, "train.steps=1", "train.batch_size=2")
    assert set(attention_calls) == {(torch.bfloat16, torch.bfloat16)}, set(attention_calls)
    assert [r["step"] for r in rows] == [1]
    assert all(math.isfinite(rows[0][k]) for k in LOSS_KEYS[cfg.objective.name]), rows[0]
