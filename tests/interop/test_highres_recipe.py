"""The high-resolution adaptation recipe (web_dino_highres) runs on a tiny model started from a lower-resolution
run: the init's weights at the new grid, the recipe's short-phase schedules in the logged metrics."""

from export_cases import train_tiny
from tiny import TINY, run_metrics

from fastvit.config import load_config
from fastvit.interop.run_checkpoint import model_state
from fastvit.train.loop import train

# The tiny model and data; the recipe's schedules (optim.*, the teacher's) are kept.
SIZE_ONLY = [o for o in TINY if not o.startswith(("optim.", "objective.web_dino.teacher_temp"))]


def test_highres_recipe_continues_a_low_resolution_run(tmp_path):
    low = train_tiny(tmp_path / "low", "model.mlp=swiglu")  # 32 px: a 4 x 4 patch grid; the recipe's MLP
    high = tmp_path / "high"
    cfg = load_config(
        "web_dino_highres",
        [
            *SIZE_ONLY,
            "model.img_size=48",
            "data.global_crops_size=48",
            "data.local_crops_size=24",
            "model.drop_path=0.0",
            "model.layerscale_init=1e-5",
            "train.precision=fp32",
            "train.steps=3",
            "train.batch_size=8",
            f"model.init={low}",
            f"train.out={high}",
        ],
    )
    assert cfg.data.global_crops_size == 48 and cfg.optim.freeze_last_layer_steps == 0
    train(cfg)
    rows = run_metrics(high)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["teacher_temp"] == 0.07 for r in rows)  # past the warmup from the first step
    assert 0.999 <= rows[0]["momentum"] < rows[-1]["momentum"] <= 1.0
    assert model_state(high).backbone["pos_embed"].shape == (1, 1 + 36, 64)  # 6 x 6 patches now
    start, end = model_state(low).backbone, model_state(high).backbone
    # 3 steps of the recipe's warmup (lr 1e-5 / 500 per step) leave the init's weights nearly where they were
    assert (end["blocks.1.attn.qkv.weight"] - start["blocks.1.attn.qkv.weight"]).abs().max() < 1e-3
