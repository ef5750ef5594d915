"""curves.png: the loss terms and the in-run kNN of metrics.jsonl, drawn with Pillow."""

import json

import numpy as np
from PIL import Image

from fastvit.train.curves import _COLOURS, CURVES_FILE, _ticks, draw_curves


def _write_rows(run, rows):
    run.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "lo'  # a line cut off by a kill
    (run / "metrics.jsonl").write_text(text)


def _has_colour(img, rgb):
    return bool((np.asarray(img) == np.array(rgb, np.uint8)).all(-1).any())


def test_curves_draw_the_logged_loss_terms_and_the_knn_beside_them(tmp_path):
    run = tmp_path / "run"
    rows = [{"step": 0, "knn_top1": 18.0}]
    rows += [{"step": s, "loss": 9.0 - s / 100, "ibot": 3.0 - s / 300} for s in range(10, 210, 10)]
    rows += [{"step": s, "knn_top1": 18.0 + s / 20} for s in (100, 200)]
    _write_rows(run, rows)
    path = draw_curves(run, ["loss", "dino_global", "ibot"])  # dino_global was not logged: left out
    assert path == run / CURVES_FILE
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (1040, 380)  # two panels
    left, right = img.crop((0, 0, 520, 380)), img.crop((520, 0, 1040, 380))
    assert _has_colour(left, _COLOURS[0]) and _has_colour(left, _COLOURS[1])  # loss, ibot
    assert not _has_colour(left, _COLOURS[2])
    assert _has_colour(right, _COLOURS[0])  # the kNN


def test_curves_without_knn_are_one_panel(tmp_path):
    run = tmp_path / "run"
    _write_rows(run, [{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    assert Image.open(draw_curves(run, ["loss"])).size == (520, 380)


def test_ticks_are_round_and_inside_the_range():
    assert _ticks(0, 500) == [0, 100, 200, 300, 400, 500]
    assert _ticks(17.3, 41.0) == [20, 25, 30, 35, 40]
    ticks = _ticks(0.012, 0.049)
    assert ticks[0] >= 0.012 and ticks[-1] <= 0.049 and len(ticks) >= 3


def test_a_run_that_logged_no_step_draws_nothing(tmp_path):
    """train.steps=0 writes only the initial checkpoint: no metrics.jsonl, so no curves.png (and no error)."""
    assert draw_curves(tmp_path, ["loss"]) is None
    assert not (tmp_path / CURVES_FILE).exists()
