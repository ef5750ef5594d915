"""benchmarks/learning.py: its smoke mode (quick=1) runs both demos end to end, and its bars are the ones the
full mode holds (measured runs: see the benchmark's constants)."""

import json

import pytest
from fastvit.benchmarks import learning


@pytest.mark.slow
def test_learning_smoke_runs_both_demos_with_their_evaluations(tmp_path, capsys):
    assert learning.main(["quick=1", f"out={tmp_path}", "data.num_workers=0"]) == 0
    report = json.loads((tmp_path / "learning.json").read_text())
    demo, clip = report["runs"]
    assert report["quick"] and (demo["recipe"], clip["recipe"]) == ("demo", "demo_clip")
    assert demo["steps"] == clip["steps"] == learning.QUICK_STEPS
    assert sorted(map(int, demo["knn_top1"])) == [0, 1, 2]  # train.eval_every=1 from the step-0 weights
    assert 0 <= clip["zeroshot_top1"] <= 100 and clip["chance"] == pytest.approx(10.0)
    assert all(r["curves"] for r in report["runs"])
    out = capsys.readouterr().out
    assert out.count("not held (quick=1)") == 2


def _metrics(run, rows):
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_demo_bar_is_the_knn_gain_over_the_step_0_teacher(tmp_path):
    _metrics(
        tmp_path / "low",
        [{"step": 0, "knn_top1": 18.0}, {"step": 50, "knn_top1": 25.0}, {"step": 100, "knn_top1": 21.9}],
    )
    _metrics(
        tmp_path / "high", [{"step": 0, "knn_top1": 18.0}, {"step": 100, "knn_top1": 18.0 + learning.DEMO_MIN_GAIN}]
    )
    assert not learning._demo(tmp_path / "low", None)["learns"]  # the last value counts, not the peak
    assert learning._demo(tmp_path / "high", None)["learns"]


def test_a_recipe_an_unknown_demo_or_a_used_out_folder_is_refused(tmp_path):
    _metrics(tmp_path / "demo", [{"step": 0, "knn_top1": 18.0}])
    with pytest.raises(ValueError, match="holds a previous run; pass a fresh out=DIR"):
        learning.main([f"out={tmp_path}", "only=demo"])
    with pytest.raises(ValueError, match="only=..."):
        learning.main(["web_dino_vit7b"])
    with pytest.raises(ValueError, match="choose one of demo, demo_clip"):
        learning.main(["only=demo_mae"])
