"""Validate, then write: a refused resume leaves the run folder as it was; metrics rows continue after a resume;
the final checkpoint is written even when the last step is skipped."""

import json

from tiny import tiny_args, tiny_config

from fastvit.cli import main as cli
from fastvit.config import read_config
from fastvit.eval.run import load_teacher_backbone
from fastvit.tasks.web_dino.task import WebDINOTask
from fastvit.train import checkpoint as ckpt
from fastvit.train.loop import train
from fastvit.train.metrics import trim_metrics


def _steps_logged(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_refused_resume_leaves_the_run_folder_untouched(tmp_path, capsys):
    run = train(tiny_config(tmp_path / "run", "train.steps=1"))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert (
        cli(["train", *tiny_args(run, "train.steps=2", "model.width=96", "objective.web_dino.dino_out_dim=128")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "model.width=96 (saved: 64)" in err[0] and "objective.web_dino.dino_out_dim=128" in err[0]
    ), err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    cfg = read_config(run / "config.yaml")
    assert cfg.model.width == 64
    load_teacher_backbone(cfg, ckpt.latest_checkpoint(run))  # the checkpoint still fits its config


def test_metrics_rows_continue_after_a_resume_without_duplicates_or_gaps(tmp_path):
    run = train(tiny_config(tmp_path / "run", "train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=2"))
    # As after a SIGKILL between the step-4 row and its checkpoint, with a row cut in the middle.
    ckpt.checkpoint_dir(run).joinpath("latest").write_text("step_2\n")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "lo')
    train(tiny_config(run, "train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=2"))
    assert _steps_logged(run) == [1, 2, 3, 4]


def test_trim_metrics_keeps_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5')
    trim_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_the_final_checkpoint_is_written_when_the_last_step_is_skipped(tmp_path, monkeypatch, capsys):
    real, calls = WebDINOTask.losses, {"n": 0}

    def poisoned(self, batch, sched):
        calls["n"] += 1
        out = real(self, batch, sched)
        if calls["n"] == 3:  # the last of 3 steps
            out["total"] = out["total"] * float("nan")
        return out

    monkeypatch.setattr(WebDINOTask, "losses", poisoned)
    run = train(tiny_config(tmp_path / "run", "train.steps=3", "train.checkpoint_every=0"))
    assert "step 3: non-finite loss or gradient, step skipped" in capsys.readouterr().out
    assert ckpt.step_of(ckpt.latest_checkpoint(run)) == 3
