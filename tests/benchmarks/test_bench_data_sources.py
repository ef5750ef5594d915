"""`fastvit bench data data.source=SPEC`: any source spec is timed, beside the baseline it names."""

import importlib.util
import json

import numpy as np
from fastvit.benchmarks import data as bench_data
from PIL import Image

from fastvit.cli import main
from fastvit.data.builtin import render


def _folder(root, n_classes=2, per_class=5):
    for c in range(n_classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            img = Image.fromarray(render(c, np.random.default_rng([c, i]), 96)).resize((150 + 7 * i, 120))
            img.save(root / f"c{c}" / f"{i}.jpg", quality=90)
    return root


def test_bench_data_times_an_image_folder_and_names_its_baseline(tmp_path, capsys):
    folder = _folder(tmp_path / "imgs")
    args = ["bench", "data", f"data.source=imagefolder:{folder}", "images=8", "batch=2", "repeats=1", "workers=0"]
    assert main([*args, f"out={tmp_path}"]) == 0
    report = json.loads((tmp_path / "bench_data.json").read_text())
    baseline = "torchvision" if importlib.util.find_spec("torchvision") else "pillow"
    assert report["baseline"] == baseline and report["source"] == f"8 samples of imagefolder:{folder}"
    rows = {r["backend"]: r for r in report["results"]}
    assert {baseline, "cpp"} <= set(rows) and rows[baseline]["speedup_vs_baseline"] == 1.0
    assert all(r["images_per_s"] > 0 and r["crops_per_s"] == 10 * r["images_per_s"] for r in rows.values())
    assert report["decode"]["images"] == 8 and report["decode"]["images_per_s"] > 0
    out = capsys.readouterr().out
    label = "torchvision DINOv2 augmentation" if baseline == "torchvision" else "Pillow re-implementation"
    assert label in out and "decode" in out


def test_bench_data_subset_reads_distinct_samples_of_the_builtin_source():
    sub = bench_data.SampleSubset(bench_data.source_from_spec("builtin"), 16)
    assert len(sub) == 16 and len(set(sub.indices.tolist())) == 16 and sub.spec == "builtin:train"
    img, label = sub.read(3)
    assert img.shape == (64, 64, 3) and label == sub.indices[3] % 10
    pil = bench_data.open_pil(img)
    assert pil.size == (64, 64) and pil.mode == "RGB"


def test_bench_data_rejects_a_source_smaller_than_two_batches(tmp_path, capsys):
    folder = _folder(tmp_path / "imgs", per_class=2)
    args = ["bench", "data", f"data.source=imagefolder:{folder}", "images=64", "batch=32", f"out={tmp_path}"]
    assert main(args) != 0
    assert "has 4 samples; the benchmark needs 2 * batch" in capsys.readouterr().err
