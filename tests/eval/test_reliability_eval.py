"""Evaluation matches labels by class name (a val folder with a subset of the classes scores correctly), refuses an
unreadable class folder and out-of-range settings in one line, and prints its result on a read-only run folder."""

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "train"))
from tiny import tiny_config  # noqa: E402

from fastvit.cli import main as cli  # noqa: E402
from fastvit.data.builtin import render  # noqa: E402
from fastvit.eval import run as eval_run  # noqa: E402
from fastvit.eval.classes import shared_labels  # noqa: E402
from fastvit.train.loop import train  # noqa: E402


def _folder(root, classes, per_class=4):
    """An image folder of rendered shapes: class `class_<c>` holds shape c."""
    for c in classes:
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            img = render(c, np.random.default_rng([c, i]), 32)
            Image.fromarray(img).save(root / f"class_{c}" / f"{i}.png")
    return root


def _knn_top1(cfg, train_dir, val_dir):
    cfg.data.source, cfg.data.val_source = f"imagefolder:{train_dir}", f"imagefolder:{val_dir}"
    cfg.eval.knn_k, cfg.eval.max_images = 1, 0
    top1, sides = eval_run.score_with_info(eval_run.random_backbone(cfg), cfg, "knn")
    return top1, sides


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    return _folder(root / "train", [0, 1, 2]), root


def test_a_val_folder_with_a_subset_of_the_classes_scores_by_name(folders, tmp_path):
    train_dir, _ = folders
    val_dir = tmp_path / "val"
    shutil.copytree(train_dir / "class_1", val_dir / "class_1")  # k=1 on the same images: every one is right
    top1, sides = _knn_top1(tiny_config(tmp_path / "run"), train_dir, val_dir)
    assert top1 == 100.0  # by position (class_1 numbered 0 here) it scored 0.0
    assert sides["val"]["classes"] == ["class_1"] and "classes_not_in_train" not in sides["val"]


def test_val_classes_the_train_side_lacks_count_as_misses_and_are_reported(folders, tmp_path):
    train_dir, _ = folders
    partial = shutil.copytree(train_dir, tmp_path / "train")
    for f in (partial / "class_0").iterdir():  # an emptied class folder: the others keep their names
        f.unlink()
    top1, sides = _knn_top1(tiny_config(tmp_path / "run"), partial, train_dir)
    assert top1 == pytest.approx(200 / 3)
    assert sides["val"]["classes_not_in_train"] == ["class_0"]


def test_shared_labels_number_both_sides_through_one_list():
    class Side:
        def __init__(self, classes):
            self.classes, self.spec = classes, "imagefolder:x"

    train_y, val_y, missing = shared_labels(
        Side(["a", "b", "c"]), torch.tensor([0, 1, 2]), Side(["b", "d"]), torch.tensor([0, 1, 0])
    )
    assert train_y.tolist() == [0, 1, 2] and val_y.tolist() == [1, 3, 1] and missing == ["d"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its mode")
def test_an_unreadable_class_folder_is_an_error(folders, tmp_path):
    train_dir, _ = folders
    copy = shutil.copytree(train_dir, tmp_path / "train")
    (copy / "class_1").chmod(0)
    try:
        with pytest.raises(ValueError, match="class_1 cannot be read"):
            _knn_top1(tiny_config(tmp_path / "run"), copy, train_dir)
    finally:
        (copy / "class_1").chmod(0o755)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train(tiny_config(tmp_path_factory.mktemp("run") / "run", "train.steps=0", "eval.max_images=20"))


@pytest.mark.parametrize(
    "override", ["eval.knn_temperature=0", "eval.knn_temperature=-1", "eval.linear_epochs=-1", "eval.linear_lr=0"]
)
def test_eval_settings_out_of_range_are_one_line(tiny_run, capsys, override):
    assert cli(["eval", "knn", str(tiny_run), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and override.split("=")[0] in err[0] and "out of range" in err[0], err


def test_eval_with_another_model_shape_is_one_line(tiny_run, capsys):
    assert cli(["eval", "knn", str(tiny_run), "model.width=128"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.width=128" in err[0], err


def test_eval_on_a_folder_it_cannot_write_prints_its_result(tiny_run, tmp_path, capsys, monkeypatch):
    run = shutil.copytree(tiny_run, tmp_path / "run")

    def read_only(path, *args):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(eval_run, "update_json", read_only)
    assert cli(["eval", "knn", str(run)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["unit"] == "percent"
    assert len(err.strip().splitlines()) == 1 and "eval.json not updated" in err


def test_an_eval_json_linked_out_is_replaced_not_read(tiny_run, tmp_path, capsys):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"secret": "TOP-SECRET"}))
    (run / "eval.json").unlink(missing_ok=True)
    (run / "eval.json").symlink_to(secret)
    assert cli(["eval", "knn", str(run)]) == 0
    capsys.readouterr()
    assert not (run / "eval.json").is_symlink() and "TOP-SECRET" not in (run / "eval.json").read_text()
    assert json.loads(secret.read_text()) == {"secret": "TOP-SECRET"}
