"""A short Web-DINO training run through the Triton loss kernels (TRITON_INTERPRET=1 on a CPU) logs the losses of
the same run through the chunked torch path: objective.web_dino.loss_backend picks the Sinkhorn and cross-entropy
kernels."""

import sys
from pathlib import Path

import pytest

from fastvit.config import load_config
from fastvit.train.loop import train

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "train"))
from tiny import TINY, run_metrics  # noqa: E402

LOSSES = ("loss", "dino_global", "dino_local", "ibot", "koleo")


def _run(tmp_path, backend):
    out = tmp_path / backend
    extra = [
        "train.steps=2",
        "train.checkpoint_every=0",
        "data.val_source=",
        f"objective.web_dino.loss_backend={backend}",
    ]
    train(load_config("demo", TINY + [f"train.out={out}", *extra]))
    return run_metrics(out)


def test_triton_losses_equal_torch_losses(tmp_path):
    triton_rows, torch_rows = _run(tmp_path, "triton"), _run(tmp_path, "torch")
    assert [r["step"] for r in triton_rows] == [r["step"] for r in torch_rows] and len(torch_rows) == 2
    for a, b in zip(triton_rows, torch_rows):
        for key in LOSSES:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key, a[key], b[key])
    assert triton_rows[-1]["ibot"] > 0  # the iBOT term ran (masked patches in the tiny batches)
