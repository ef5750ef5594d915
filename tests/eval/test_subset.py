"""eval.max_images: seeded, class-balanced subsets on both evaluation sides, and what eval.json records."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastvit.config import load_config
from fastvit.data import source_from_spec
from fastvit.data.builtin import render
from fastvit.eval.run import split_features
from fastvit.eval.subset import balanced_indices, eval_indices
from fastvit.models.build import build_backbone


def _class_by_class_folder(root, per_class):
    """A labelled folder whose files list class by class (the layout where "the first N" loses classes)."""
    for c, n in enumerate(per_class):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(render(c % 10, np.random.default_rng([c, i]), 32)).save(root / f"c{c}" / f"{i:03d}.jpg")
    return root


def test_balanced_indices_spread_over_every_class_and_fill_from_the_larger_ones():
    labels = np.repeat(np.arange(5), [30, 30, 30, 30, 2])  # class 4 has only 2 images
    idx = balanced_indices(labels, 41, np.random.default_rng(0))
    counts = np.bincount(labels[idx], minlength=5)
    assert len(idx) == len(set(idx.tolist())) == 41
    assert counts[4] == 2 and sorted(counts[:4].tolist()) == [9, 10, 10, 10]
    assert np.all(np.diff(idx) > 0)  # sorted, read in file order
    again = balanced_indices(labels, 41, np.random.default_rng(0))
    assert np.array_equal(idx, again)
    other = balanced_indices(labels, 41, np.random.default_rng(1))
    assert not np.array_equal(idx, other)  # the picks inside a class come from the generator


def test_eval_indices_rules(tmp_path):
    folder = source_from_spec(f"imagefolder:{_class_by_class_folder(tmp_path / 'f', [12] * 5)}")
    idx, how = eval_indices(folder, 20, seed=0, split="train")
    assert how == "class-balanced" and np.bincount(np.asarray(folder.labels)[idx]).tolist() == [4] * 5
    val_idx, _ = eval_indices(folder, 20, seed=0, split="val")
    assert not np.array_equal(idx, val_idx)  # the two sides draw from their own streams
    assert eval_indices(folder, 0)[1] == "all" and len(eval_indices(folder, 100)[0]) == 60
    builtin = source_from_spec("builtin:val")
    idx, how = eval_indices(builtin, 100, seed=3, split="val")
    assert how == "class-balanced" and np.bincount(idx % 10).tolist() == [10] * 10
    with pytest.raises(ValueError, match="max_images"):
        eval_indices(folder, -1)


def test_split_features_reads_a_balanced_subset_of_a_class_by_class_folder(tmp_path):
    root = _class_by_class_folder(tmp_path / "f", [10] * 4)
    cfg = load_config(
        "demo",
        ["model.width=32", "model.depth=1", "model.heads=2", "model.img_size=32", "data.global_crops_size=32"]
        + ["eval.max_images=12", f"data.source=imagefolder:{root}"],
    )
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model)
    backbone.to_empty(device="cpu")
    backbone.init_weights()
    x, y, info = split_features(backbone, cfg, cfg.data.source, "train")
    assert x.shape == (12, 32) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert info == {
        "source": cfg.data.source,
        "images": 12,
        "subset": "class-balanced",
        "classes": ["c0", "c1", "c2", "c3"],
    }
    json.dumps(info)  # goes into eval.json as it is
