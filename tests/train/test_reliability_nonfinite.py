"""The non-finite guard checks the update: an exploding gradient norm is skipped (the loss may stay finite), and
weights that are not finite are never checkpointed."""

import math

import pytest
from tiny import tiny_config

from fastvit.eval.run import load_teacher_backbone
from fastvit.tasks.web_dino.task import WebDINOTask
from fastvit.train import checkpoint as ckpt
from fastvit.train import loop
from fastvit.train.loop import NonFiniteLossError, train


def test_an_exploding_step_is_skipped_and_ordinary_steps_are_not(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop._NormGuard, "WARMUP", 2)
    real, calls = WebDINOTask.losses, {"n": 0}

    def exploding(self, batch, sched):
        calls["n"] += 1
        out = real(self, batch, sched)
        if calls["n"] == 7:  # a finite loss with a gradient 1e8 x larger
            out["total"] = out["total"] * 1e8
        return out

    monkeypatch.setattr(WebDINOTask, "losses", exploding)
    run = train(tiny_config(tmp_path / "run", "train.steps=8", "train.checkpoint_every=0", "optim.clip_grad=0"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "step skipped" in line]
    assert len(lines) == 1 and lines[0].startswith("step 7: gradient norm") and "1000 x the running norm" in lines[0]
    path = ckpt.latest_checkpoint(run)
    assert ckpt.step_of(path) == 8
    cfg = tiny_config(run)
    teacher = load_teacher_backbone(cfg, path)
    student = ckpt.load_module(path, load_teacher_backbone(cfg, path), "student", "backbone.")
    for backbone in (teacher, student):
        biggest = max(float(t.abs().max()) for t in backbone.state_dict().values() if t.is_floating_point())
        assert math.isfinite(biggest) and biggest < 100, biggest


def test_weights_that_are_not_finite_are_never_checkpointed(tmp_path, monkeypatch):
    real, calls = WebDINOTask.after_step, {"n": 0}

    def poisoned(self, sched):
        real(self, sched)
        calls["n"] += 1
        if calls["n"] == 2:
            next(self.student.parameters()).data.fill_(float("inf"))

    monkeypatch.setattr(WebDINOTask, "after_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="not finite after step 2, so no checkpoint was written"):
        train(tiny_config(tmp_path / "run", "train.steps=4", "train.checkpoint_every=2"))
    assert ckpt.step_of(ckpt.latest_checkpoint(tmp_path / "run")) == 0
