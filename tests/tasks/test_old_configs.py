"""Run folders written before the objective sections (flat objective.mae_* / clip_* / dino keys) still resume: their
keys map to the sections when config.yaml is read; on the command line the old keys are refused naming the new."""

import json

import pytest
import yaml

from fastvit.config import load_config, read_config
from fastvit.errors import UserError
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
    "objective.web_mae.decoder_width=32",
    "objective.web_mae.decoder_depth=1",
    "objective.web_mae.decoder_heads=2",
    "train.batch_size=8",
    "train.log_every=1",
    "train.checkpoint_every=0",
]

# The objective section as the previous version wrote it into a run folder (every objective's keys, flat).
OLD_OBJECTIVE = {
    "name": "web_mae",
    "dino_out_dim": 131072,
    "ibot_out_dim": 131072,
    "head_hidden_dim": 2048,
    "dino_bottleneck_dim": 384,
    "ibot_bottleneck_dim": 256,
    "centering": "sinkhorn",
    "student_temp": 0.1,
    "teacher_temp": 0.07,
    "teacher_temp_warmup": 0.04,
    "teacher_temp_warmup_steps": 37500,
    "momentum_teacher": 0.994,
    "momentum_teacher_final": 1.0,
    "dino_weight": 1.0,
    "ibot_weight": 1.0,
    "koleo_weight": 0.1,
    "loss_backend": "auto",
    "mae_mask_ratio": 0.6,
    "mae_decoder_width": 32,
    "mae_decoder_depth": 1,
    "mae_decoder_heads": 2,
    "mae_norm_pix": True,
    "mae_loss_backend": "auto",
    "clip_loss": "siglip",
    "clip_embed_dim": 512,
    "clip_text_width": 512,
    "clip_text_depth": 12,
    "clip_text_heads": 8,
    "clip_context_length": 77,
    "clip_tokenizer": "",
    "clip_init_temperature": 0.07,
    "clip_loss_backend": "auto",
}


def _make_old(run):
    """Rewrites a run folder's config.yaml with the flat objective section of the previous version."""
    doc = yaml.safe_load((run / "config.yaml").read_text())
    doc["objective"] = dict(OLD_OBJECTIVE)
    (run / "config.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def test_an_old_config_yaml_maps_to_the_sections(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"objective": OLD_OBJECTIVE}))
    o = read_config(path).objective
    assert (o.name, o.web_mae.mask_ratio, o.web_mae.decoder_width, o.clip.loss) == ("web_mae", 0.6, 32, "siglip")
    assert (o.web_dino.dino_out_dim, o.web_dino.loss_backend, o.clip.context_length) == (131072, "auto", 77)


def test_an_old_run_folder_resumes(tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "objective.name=web_mae", "objective.web_mae.mask_ratio=0.6", f"train.out={run}"]
    train(load_config("demo", [*args, "train.steps=2"]))
    _make_old(run)
    train(load_config("demo", [*args, "train.steps=3"]))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # resumed at step 2, not started again
    _make_old(run)  # and a shape change against the old file is still refused, naming the new key
    with pytest.raises(UserError, match=r"objective.web_mae.decoder_width=64 \(saved: 32\)"):
        train(load_config("demo", [*args, "train.steps=4", "objective.web_mae.decoder_width=64"]))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("objective.mae_mask_ratio", "objective.web_mae.mask_ratio"),
        ("objective.clip_loss", "objective.clip.loss"),
        ("objective.clip_loss_backend", "objective.clip.loss_backend"),
        ("objective.dino_out_dim", "objective.web_dino.dino_out_dim"),
        ("objective.loss_backend", "objective.web_dino.loss_backend"),
        ("objective.mae_loss_backend", "objective.web_mae.loss_backend"),
    ],
)
def test_old_keys_on_the_command_line_name_the_new_key(old, new):
    with pytest.raises(ValueError, match=f"'{old}' is now '{new}'"):
        load_config("demo", [f"{old}=1"])
