"""`fastvit eval knn|linear` scores an HF folder and a native file as it scores the run they were exported from."""

import json

import pytest
from export_cases import train_tiny

from fastvit.cli import main as cli

transformers = pytest.importorskip("transformers")

EVAL = ("eval.max_images=64",)


def _top1(capsys, *args):
    assert cli(["eval", *args, *EVAL]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_knn_scores_an_hf_folder_and_a_native_file_like_their_run(tmp_path, capsys):
    run = train_tiny(tmp_path / "run")
    assert cli(["export", str(run), str(tmp_path / "hf")]) == 0
    assert cli(["export", str(run), str(tmp_path / "teacher.pth")]) == 0
    capsys.readouterr()
    want = _top1(capsys, "knn", str(run))
    for model in (tmp_path / "hf", tmp_path / "teacher.pth"):
        got = _top1(capsys, "knn", str(model), "model.heads=2")  # a custom width: the heads are not in a .pth
        assert got["top1"] == pytest.approx(want["top1"], abs=1e-9), model
        assert got["val"]["images"] == want["val"]["images"] > 0
    assert _top1(capsys, "linear", str(tmp_path / "hf"))["unit"] == "percent"
