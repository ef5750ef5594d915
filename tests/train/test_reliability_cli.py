"""What a user can cause ends in one line on stderr and exit code 2, naming the file or key; nothing is run."""

import os
import pickle
import shutil

import pytest
from tiny import tiny_args, tiny_config

from fastvit.cli import main as cli
from fastvit.train import checkpoint as ckpt
from fastvit.train.loop import train


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "override",
    ["train.steps=-5", "train.log_every=0", "optim.grad_accum=0", "model.heads=-1", "train.keep_checkpoints=0"],
)
def test_out_of_range_keys_are_one_line(tmp_path, capsys, override):
    assert cli(["train", *tiny_args(tmp_path / "run", override)]) == 2
    line = _one_line(capsys)
    assert line.startswith("fastvit train: error: " + override) and "out of range" in line
    assert not (tmp_path / "run").exists()


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("train:\n  steps: 3\n  out: [runs/x\nmodel:\n  name: vit_s\n")
    assert cli(["train", str(recipe)]) == 2
    line = _one_line(capsys)
    assert str(recipe) in line and "line " in line and "YAML" in line


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train(tiny_config(tmp_path_factory.mktemp("run") / "run", "train.steps=0"))


def test_an_empty_latest_is_one_line(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "checkpoints" / "latest").write_text("")
    assert cli(["eval", "knn", str(run)]) == 2
    assert "latest is empty" in _one_line(capsys)
    assert cli(["train", *tiny_args(run)]) == 2
    assert "latest is empty" in _one_line(capsys)


def test_a_truncated_shard_is_one_line_naming_it(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    step = ckpt.latest_checkpoint(run)
    shard = next(step.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:1000])
    assert cli(["eval", "knn", str(step)]) == 2
    line = _one_line(capsys)
    assert shard.name in line and "1000 bytes" in line


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_eval_of_a_crafted_checkpoint_runs_nothing(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    step = ckpt.latest_checkpoint(run)
    marker = tmp_path / "pwned"
    (step / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    (step / ckpt.MANIFEST).unlink()  # as a checkpoint written before manifests: no checksum to stop it
    assert cli(["eval", "knn", str(step)]) == 2
    assert "refused" in _one_line(capsys)
    assert cli(["train", *tiny_args(run, "train.steps=1")]) == 2
    assert "refused" in _one_line(capsys)
    assert not marker.exists()


def test_a_folder_of_only_broken_files_is_one_line(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(20):
        (folder / f"img_{i}.jpg").write_bytes(b"not a jpeg at all" * i)
    assert cli(["train", *tiny_args(tmp_path / "run", f"data.source=imagefolder:{folder}", "train.steps=1")]) == 2
    line = _one_line(capsys)
    assert f"imagefolder:{folder}" in line and "cannot be read" in line


def test_disk_full_while_training_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from fastvit.train.metrics import MetricsLogger

    def full(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "metrics.jsonl"))

    monkeypatch.setattr(MetricsLogger, "log", full)
    assert cli(["train", *tiny_args(tmp_path / "run", "train.steps=1")]) == 2
    line = _one_line(capsys)
    assert "No space left on device writing" in line and "metrics.jsonl" in line and "free space" in line
