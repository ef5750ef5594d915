"""One writer per run folder, files that stay inside it, shareable modes: each case one line and exit 2, nothing
written before the refusal, nothing outside the folder read or written through it."""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch
from tiny import tiny_args, tiny_config

from fastvit.cli import main as cli
from fastvit.errors import UserError
from fastvit.testing import run_ranks
from fastvit.train import checkpoint as ckpt
from fastvit.train.loop import train
from fastvit.train.runlock import RunLock


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train(tiny_config(tmp_path_factory.mktemp("run") / "run", "train.steps=0"))


def test_a_second_trainer_is_refused_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    with RunLock(run):
        assert cli(["train", *tiny_args(run, "train.steps=1")]) == 2
        line = _one_line(capsys)
    assert "in use by another trainer" in line and f"host {socket.gethostname()} pid {os.getpid()}" in line
    assert sorted(p.name for p in run.iterdir()) == ["train.lock"]  # nothing else written


def _train_rank(rank, world_size, out):
    torch.set_num_threads(1)
    try:
        train(tiny_config(out, "train.steps=1", "objective.web_dino.koleo_weight=0"))
    except UserError as e:
        return str(e)
    return None


@pytest.mark.multirank
def test_under_two_ranks_rank_0_takes_the_lock_and_every_rank_stops_on_a_refusal(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        refusals = run_ranks(_train_rank, 2, str(run))
    assert "in use by another trainer" in refusals[0] and "rank 0 could not lock" in refusals[1]
    assert sorted(p.name for p in run.iterdir()) == ["train.lock"]
    assert run_ranks(_train_rank, 2, str(run)) == [None, None]  # free: the two ranks train
    assert ckpt.latest_checkpoint(run).name == "step_1"


def test_the_lock_of_a_killed_trainer_is_released_by_the_kernel(tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny_args(run, "train.steps=500", "train.checkpoint_every=0")
    proc = subprocess.Popen([sys.executable, "-m", "fastvit.cli", "train", *args], stdout=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (run / "metrics.jsonl").is_file():
            assert proc.poll() is None and time.time() - t0 < 120, "the run did not log a step"
            time.sleep(0.1)
        rows = (run / "metrics.jsonl").read_text()
        assert cli(["train", *tiny_args(run, "train.steps=2")]) == 2
        assert f"pid {proc.pid}" in _one_line(capsys)
        assert (run / "metrics.jsonl").read_text().startswith(rows)  # the second one did not trim the rows
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    RunLock(run).release()  # free again: a stale lock file blocks nothing


@pytest.mark.parametrize("case", ["empty", "file", "under_a_file"])
def test_train_out_must_name_a_folder(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("keep: me\n")
    (tmp_path / "notes.txt").write_text("x")
    out = {"empty": "", "file": "notes.txt", "under_a_file": "notes.txt/run"}[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli(["train", *tiny_args(out, "train.steps=1")]) == 2
    line = _one_line(capsys)
    assert "train.out" in line and ("empty" in line if case == "empty" else "a file, not a folder" in line)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "config.yaml").read_text() == "keep: me\n"


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml"])
def test_a_file_linked_out_of_the_run_folder_is_refused(tmp_path, capsys, name):
    run, outside = tmp_path / "run", tmp_path / "outside.txt"
    run.mkdir()
    (run / name).symlink_to(outside)  # dangling: writing through it would create the file outside
    assert cli(["train", *tiny_args(run, "train.steps=1")]) == 2
    assert "symbolic link" in _one_line(capsys)
    assert not outside.exists() and not (run / "checkpoints").exists()


def test_metrics_jsonl_a_folder_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "metrics.jsonl").mkdir(parents=True)
    assert cli(["train", *tiny_args(run, "train.steps=1")]) == 2
    assert "not a regular file" in _one_line(capsys)


def test_latest_linked_out_is_refused_without_reading_it(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    latest = run / "checkpoints" / "latest"
    latest.unlink()
    latest.symlink_to(secret)
    assert cli(["eval", "knn", str(run)]) == 2
    line = _one_line(capsys)
    assert "symbolic link" in line and "TOP-SECRET" not in line
    assert cli(["train", *tiny_args(run)]) == 2
    assert "symbolic link" in _one_line(capsys)


def test_eval_of_a_config_linked_out_is_refused(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    outside = tmp_path / "outside.yaml"
    (run / "config.yaml").rename(outside)
    (run / "config.yaml").symlink_to(outside)
    for target in (run, ckpt.latest_checkpoint(run)):
        assert cli(["eval", "knn", str(target)]) == 2
        assert "config.yaml is a symbolic link" in _one_line(capsys)


@pytest.mark.parametrize("entry", ["/etc/hostname", "../../config.yaml", "sub/x"])
def test_a_manifest_entry_out_of_the_checkpoint_is_refused(tiny_run, tmp_path, capsys, entry):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    step = ckpt.latest_checkpoint(run)
    manifest = json.loads((step / ckpt.MANIFEST).read_text())
    manifest["files"][entry] = {"size": 1, "sha256": "0" * 64}
    (step / ckpt.MANIFEST).write_text(json.dumps(manifest))
    assert ckpt.verify_checkpoint(step).endswith("is not a plain file name")
    assert cli(["eval", "knn", str(step)]) == 2
    line = _one_line(capsys)
    assert "not a plain file name" in line and "bytes" not in line


@pytest.mark.parametrize("bad", [{"order": "zzz"}, {"files": {"x": 3}}])
def test_a_malformed_manifest_is_one_line_and_later_saves_work(tiny_run, tmp_path, capsys, bad):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    step = ckpt.latest_checkpoint(run)
    manifest = json.loads((step / ckpt.MANIFEST).read_text())
    (step / ckpt.MANIFEST).write_text(json.dumps({**manifest, **bad}))
    assert cli(["train", *tiny_args(run, "train.steps=1")]) == 2
    assert "manifest.json is malformed" in _one_line(capsys)
    (run / "checkpoints" / "latest").unlink()  # as the message says: start afresh
    assert cli(["train", *tiny_args(run, "train.steps=0")]) == 0  # saves again over the malformed one
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert ckpt.verify_checkpoint(ckpt.latest_checkpoint(run)) is None


def test_a_step_folder_linked_out_is_replaced_not_followed(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_3").symlink_to(outside, target_is_directory=True)
    train(tiny_config(run, "train.steps=3"))
    step = run / "checkpoints" / "step_3"
    assert step.is_dir() and not step.is_symlink() and ckpt.verify_checkpoint(step) is None
    assert [p.name for p in outside.iterdir()] == ["keep.txt"]


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = train(tiny_config(tmp_path / "run", "train.steps=1", "train.checkpoint_every=0"))
    finally:
        os.umask(old)
    step = ckpt.latest_checkpoint(run)
    for file in (run / "config.yaml", run / "metrics.jsonl", run / "checkpoints" / "latest", step / ckpt.MANIFEST):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644, file
