"""benchmarks/parity.py in its smoke mode: the fastvit side always; the lightly + timm side only where the
interpreter named by FASTVIT_PARITY_PYTHON (default: this one) imports lightly, timm and torchvision."""

import json
import os
import sys

import pytest
import torch
from fastvit.benchmarks import parity


@pytest.mark.slow
def test_parity_smoke_scores_both_sides_with_one_knn(tmp_path, capsys):
    python = os.environ.get("FASTVIT_PARITY_PYTHON", sys.executable)
    argv = ["--smoke", "--seeds", "2", "--out", str(tmp_path), "--python", python, "--workers", "0"]
    argv.append("train.batch_size=8")  # fastvit overrides, the lightly side's too
    assert parity.main(argv) == 0
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["steps"] == parity.SMOKE["steps"] and report["unit"] == "percent"
    assert report["val_images"] == parity.SMOKE["val_n"] and report["train_images"] == parity.SMOKE["eval_images"]
    expected = {"fastvit", "lightly"} if parity.lightly_ready(python) is None else {"fastvit"}
    assert set(report["sides"]) == expected
    for name, side in report["sides"].items():
        runs = report["runs"][name]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert 0.0 <= r["top1_before"] <= 100.0 and 0.0 <= r["top1_after"] <= 100.0 and r["train_seconds"] > 0
        gains = torch.tensor([r["gain_per_step"] for r in runs], dtype=torch.float64)
        assert side["gain_per_step"] == pytest.approx(gains.mean().item())
        assert side["gain_per_step_std"] == pytest.approx(gains.std().item())
    out = capsys.readouterr().out
    if "lightly" not in expected:
        assert "lightly side skipped" in out and python in report["lightly_skipped"]
    assert "kNN top-1 (%)" in out and "mean +- std over 2 seed(s)" in out
