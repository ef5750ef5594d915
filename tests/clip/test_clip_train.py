"""A short CPU CLIP run through the generic loop lowers its loss; kNN and zero-shot read its checkpoint."""

import json

import pytest

from fastvit.config import load_config
from fastvit.eval.run import load_teacher_backbone
from fastvit.eval.zeroshot import evaluate_zeroshot
from fastvit.train import checkpoint as ckpt
from fastvit.train.loop import train


@pytest.mark.parametrize("kind,lr", [("infonce", 3e-3), ("siglip", 1e-3)])
def test_short_clip_run_lowers_loss_and_evaluates(tmp_path, kind, lr):
    cfg = load_config(
        "demo_clip",
        [
            f"train.out={tmp_path}",
            "train.steps=24",
            "train.batch_size=32",
            "train.log_every=4",
            "train.checkpoint_every=0",
            "model.width=64",
            "model.depth=2",
            "model.heads=2",
            "model.img_size=32",
            "data.global_crops_size=32",
            "objective.clip_text_width=32",
            "objective.clip_text_depth=1",
            "objective.clip_text_heads=2",
            "objective.clip_embed_dim=32",
            "objective.clip_context_length=24",
            "data.num_workers=0",
            "optim.warmup_steps=4",
            f"optim.lr={lr}",
            f"objective.clip_loss={kind}",
            "eval.max_images=40",
        ],
    )
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 6 and "logit_scale" in rows[0]
    assert losses[-1] < losses[0] - 0.2, losses
    if kind == "siglip":
        return
    latest = ckpt.latest_checkpoint(tmp_path)
    backbone = load_teacher_backbone(cfg, latest)  # no teacher: the student's backbone
    assert backbone.cfg.width == 64
    result = evaluate_zeroshot(tmp_path, cfg, latest)
    assert 0.0 <= result["top1"] <= 100.0 and result["chance"] == 10.0
    assert "zeroshot" in json.loads((tmp_path / "eval.json").read_text())
