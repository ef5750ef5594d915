import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import tiny_args, tiny_config

from fastvit.cli import main as cli
from fastvit.eval.run import evaluate_run
from fastvit.tasks.web_dino.task import WebDINOTask
from fastvit.train import checkpoint as ckpt
from fastvit.train.loop import NonFiniteLossError, train

LOSS_TERMS = ("loss", "dino_global", "dino_local", "ibot", "koleo")


def read_metrics(run_dir):
    """{step: record} keeping the last record of each step (a resumed run re-logs the steps after its checkpoint)."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def test_zero_steps_writes_the_initial_checkpoint_and_eval_reads_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", *tiny_args(run, "train.steps=0")]) == 0
    assert ckpt.latest_checkpoint(run).name == "step_0"
    capsys.readouterr()
    assert cli(["eval", "knn", str(run), "eval.max_images=100"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 0 and 0.0 <= result["top1"] <= 100.0
    assert json.loads((run / "eval.json").read_text())["knn"]["top1"] == result["top1"]


def test_metrics_carry_every_term_and_the_schedules(tmp_path):
    run = train(tiny_config(tmp_path / "run", "train.steps=3", "objective.web_dino.teacher_temp=0.07"))
    m = read_metrics(run)
    assert sorted(m) == [1, 2, 3]
    for key in (
        *LOSS_TERMS,
        "lr",
        "wd",
        "momentum",
        "teacher_temp",
        "images_per_s",
        "tflops",
        "mfu",
        "memory_gib",
        "skipped_files",
        "grad_norm",
    ):
        assert key in m[3], key
    assert all(math.isfinite(m[s]["loss"]) for s in m)
    assert m[1]["lr"] == 0.0 and m[2]["lr"] > 0.0  # linear warmup from 0
    assert m[1]["teacher_temp"] == pytest.approx(0.04) and m[3]["teacher_temp"] == pytest.approx(0.07)
    assert ckpt.step_of(ckpt.latest_checkpoint(run)) == 3


def test_checkpoints_are_pruned_to_keep(tmp_path):
    run = train(tiny_config(tmp_path / "run", "train.steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=2"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step_3", "step_4"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_4"


def test_non_finite_losses_skip_steps_then_stop_the_run(tmp_path, monkeypatch, capsys):
    real = WebDINOTask.losses
    calls = {"n": 0}

    def poisoned(self, batch, sched):
        calls["n"] += 1
        out = real(self, batch, sched)
        if calls["n"] >= 2:  # the first step is fine, every later one is NaN
            out["total"] = out["total"] * float("nan")
        return out

    monkeypatch.setattr(WebDINOTask, "losses", poisoned)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        train(tiny_config(tmp_path / "run", "train.steps=10", "train.max_bad_steps=3", "train.checkpoint_every=1"))
    out = capsys.readouterr().out
    assert "step 2: non-finite loss or gradient, step skipped (1 in a row)" in out  # 1-based, as in metrics
    run = tmp_path / "run"
    assert ckpt.step_of(ckpt.latest_checkpoint(run)) == 1  # the last good checkpoint is intact
    assert sorted(read_metrics(run)) == [1]


def _run_cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fastvit.cli", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _wait_for_step(run, step, proc, timeout=120):
    metrics = Path(run) / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if metrics.is_file() and any(json.loads(x)["step"] >= step for x in metrics.read_text().splitlines()):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"step {step} was not logged within {timeout} s")


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_the_uninterrupted_losses(tmp_path):
    extra = ("train.steps=6", "train.checkpoint_every=2", "data.num_workers=1", "model.drop_path=0.1")
    straight = tmp_path / "straight"
    proc = _run_cli(tiny_args(straight, *extra))
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    resumed = tmp_path / "resumed"
    proc = _run_cli(tiny_args(resumed, *extra))
    _wait_for_step(resumed, 3, proc)  # past the step-2 checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.step_of(ckpt.latest_checkpoint(resumed)) in (2, 4)
    proc = _run_cli(tiny_args(resumed, *extra))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "steps 2 -> 6" in out or "steps 4 -> 6" in out
    a, b = read_metrics(straight), read_metrics(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    rows = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5, 6]  # the rows logged after the checkpoint were not kept twice
    for step in a:
        for key in LOSS_TERMS:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-6, abs=1e-7), (step, key)


def test_sigterm_writes_a_checkpoint_and_exits_non_zero_without_the_final_evaluation(tmp_path):
    run = tmp_path / "run"
    proc = _run_cli(tiny_args(run, "train.steps=500", "train.checkpoint_every=0"))
    _wait_for_step(run, 1, proc)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out  # preempted, not finished
    assert "stop requested" in out and "stopped by SIGTERM" in out
    assert "top1" not in out and not (run / "eval.json").exists()
    step = ckpt.step_of(ckpt.latest_checkpoint(run))
    assert 1 <= step < 500 and max(read_metrics(run)) <= step


def test_bad_input_fails_at_start_with_a_clear_message(tmp_path, capsys):
    assert cli(["train", *tiny_args(tmp_path / "a", "data.source=imagefolder:" + str(tmp_path / "missing"))]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli(["train", *tiny_args(tmp_path / "b", "train.batch_size=7", "optim.grad_accum=2")]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_teacher_runs_every_block_while_the_student_drops_paths(tmp_path):
    """With model.drop_path > 0 the student drops whole images from residual branches; the EMA teacher never does."""
    import torch

    from fastvit.tasks.web_dino.model import build_student_teacher

    student, teacher = build_student_teacher(tiny_config(tmp_path, "model.drop_path=0.5"), torch.device("cpu"))
    assert student.training and not teacher.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t1, t2 = (teacher.backbone(x)["cls"] for _ in range(2))
        s1, s2 = (student.backbone(x)["cls"] for _ in range(2))
    assert torch.equal(t1, t2)
    assert not torch.equal(s1, s2)  # the student's forward is stochastic, so the teacher's being fixed is not vacuous


def test_eval_every_logs_the_teachers_knn(tmp_path):
    """train.eval_every: the kNN top-1 of the step's live teacher goes into that step's metrics row and eval.json."""
    run = tmp_path / "run"
    train(tiny_config(run, "train.steps=4", "train.eval_every=2", "train.log_every=3", "train.checkpoint_every=0"))
    rows = read_metrics(run)
    assert sorted(rows) == [0, 2, 3, 4]  # the step-0 kNN, then eval steps logged whatever log_every says
    assert "knn_top1" not in rows[3] and 0.0 <= rows[0]["knn_top1"] <= 100.0
    for step in (2, 4):
        assert 0.0 <= rows[step]["knn_top1"] <= 100.0
    saved = json.loads((run / "eval.json").read_text())["knn"]
    assert saved["step"] == 4 and saved["top1"] == rows[4]["knn_top1"]
    for step in (0, 2):  # the live teacher is evaluated: no checkpoint for it
        assert not (run / "checkpoints" / f"step_{step}").exists()
    assert (run / "curves.png").is_file()  # the loss terms and the kNN, drawn at the end of the run
    # the same kNN as `fastvit eval knn` of the final checkpoint (the teacher of step 4)
    assert evaluate_run(run, tiny_config(run), "knn")["top1"] == rows[4]["knn_top1"]
