"""Adding an objective is one folder and one registry line: tests/tasks/toy_rotation/ (its config section, model,
task and spec) joins fastvit.tasks.OBJECTIVES and trains through the unchanged loop, config and checkpoints."""

import json

import pytest

import fastvit.tasks
from fastvit.config import load_config, read_config
from fastvit.train.loop import train

TINY = [
    "model.width=64",
    "model.depth=2",
    "model.heads=2",
    "model.patch_size=8",
    "model.img_size=32",
    "data.num_workers=0",
    "data.global_crops_size=32",
    "data.val_source=",
    "train.batch_size=8",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "optim.warmup_steps=1",
    "optim.lr=1e-3",
]


@pytest.fixture
def with_rotation(monkeypatch):
    monkeypatch.setattr(fastvit.tasks, "OBJECTIVES", [*fastvit.tasks.OBJECTIVES, "toy_rotation"])  # the one line


def test_a_toy_objective_trains_from_its_own_folder(tmp_path, with_rotation):
    run = tmp_path / "run"
    overrides = ["objective.name=rotation", "objective.rotation.label_smoothing=0.1", f"train.out={run}"]
    cfg = load_config("demo", [*TINY, "train.steps=3", *overrides])
    train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(0 < r["rotation"] < 10 and r["loss"] == r["rotation"] for r in rows), rows
    saved = read_config(run / "config.yaml")
    assert saved.objective.name == "rotation" and saved.objective.rotation.label_smoothing == 0.1
    # its spec's resume_fixed_keys guard the saved head; other keys resume
    more = load_config("demo", [*TINY, "train.steps=4", *overrides])
    train(more)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
    with pytest.raises(ValueError, match=r"objective.rotation.rotations=2 \(saved: 4\)"):
        train(load_config("demo", [*TINY, "train.steps=5", *overrides, "objective.rotation.rotations=2"]))


def test_an_unregistered_objective_is_refused_with_the_registered_names():
    with pytest.raises(ValueError, match="objective.name='rotation' is not one of 'web_dino', 'web_mae', 'clip'"):
        load_config("demo", ["objective.name=rotation"])
