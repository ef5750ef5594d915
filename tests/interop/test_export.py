"""`fastvit export`: a tiny run trained on the CPU, exported to an HF folder and to native files, gives through
transformers and through fastvit's converters the features `fastvit eval` computes (fp32 rounding); with --heads
the DINO / iBOT heads come back exactly; register tokens go to Dinov2WithRegistersModel."""

import pytest
import torch
from export_cases import eval_features, eval_images, hf_features, train_tiny

from fastvit.cli import main as cli
from fastvit.interop import head_state_from_native, load_native, load_state_file, normalize_native
from fastvit.interop.convert import read_model
from fastvit.interop.run_checkpoint import model_state
from fastvit.models import VisionTransformer
from fastvit.testing import assert_close

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("export") / "run")


def test_export_to_hf_gives_the_features_fastvit_eval_computes(run, tmp_path):
    assert cli(["export", str(run), str(tmp_path / "hf")]) == 0
    got, model = hf_features(tmp_path / "hf", eval_images())
    assert type(model).__name__ == "Dinov2Model"
    want = eval_features(run)
    assert_close(got, want, atol=2e-5, name="HF pooler_output vs fastvit eval CLS")
    assert not torch.allclose(want, eval_features_of_student(run), atol=1e-4)  # the teacher, not the student


def eval_features_of_student(run):
    got = model_state(run, "student")
    vit = VisionTransformer(got.vit).eval()
    vit.load_state_dict(got.backbone)
    with torch.no_grad():
        return vit(eval_images())["cls"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_export_to_native_loads_in_the_converters_with_the_same_features(run, tmp_path, suffix):
    dst = tmp_path / f"teacher{suffix}"
    assert cli(["export", str(run), str(dst)]) == 0
    native, cfg, kind, _ = read_model(dst, heads=2)  # a custom width: the heads are not in the weights
    assert kind == "native" and (cfg.width, cfg.depth, cfg.img_size) == (64, 2, 32)
    vit = load_native(VisionTransformer(cfg).eval(), native)
    with torch.no_grad():
        got = vit(eval_images())["cls"]
    assert_close(got, eval_features(run), atol=2e-5, name="native export vs fastvit eval")


def test_export_with_heads_writes_dinov2_training_names(run, tmp_path):
    dst = tmp_path / "full.pth"
    assert cli(["export", str(run), str(dst), "--heads"]) == 0
    state = load_state_file(dst)
    assert "teacher.backbone.cls_token" in state and "teacher.dino_head.last_layer.weight_g" in state
    want = model_state(run, heads=True)
    for name in ("dino_head", "ibot_head"):
        head = head_state_from_native(state, name)
        assert head.keys() == want.heads[name].keys()
        for key, value in want.heads[name].items():
            assert torch.equal(head[key], value), (name, key)
    backbone = normalize_native(state)
    assert all(torch.equal(backbone[k], v) for k, v in want.backbone.items())


def test_export_refuses_what_it_cannot_write(run, tmp_path, capsys):
    assert cli(["export", str(run), str(tmp_path / "hf"), "--heads"]) == 2
    assert "--heads needs --to native" in capsys.readouterr().err
    assert cli(["export", str(tmp_path / "nothing"), str(tmp_path / "x.pth")]) == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_registers_export_to_dinov2_with_registers(tmp_path):
    run = train_tiny(tmp_path / "reg", "model.n_registers=2")
    assert cli(["export", str(run), str(tmp_path / "hf")]) == 0
    got, model = hf_features(tmp_path / "hf", eval_images())
    assert type(model).__name__ == "Dinov2WithRegistersModel"
    assert_close(got, eval_features(run), atol=2e-5, name="Dinov2WithRegistersModel vs fastvit eval")
    native, cfg, kind, _ = read_model(tmp_path / "hf")  # and back: the registers survive the round trip
    assert kind == "hf" and cfg.n_registers == 2 and native["register_tokens"].shape == (1, 2, 64)


ENCODER_RUNS = {
    "demo_mae": ("objective.web_mae.decoder_width=32", "objective.web_mae.decoder_depth=1"),
    "demo_clip": ("objective.clip.text_width=64", "objective.clip.text_depth=1", "objective.clip.embed_dim=32"),
}


@pytest.mark.parametrize("recipe", sorted(ENCODER_RUNS))
def test_web_mae_and_clip_runs_export_their_image_encoders(tmp_path, recipe):
    from fastvit.config import load_config
    from fastvit.train.loop import train

    tiny = ["model.width=64", "model.depth=2", "model.heads=2", "model.img_size=32", "data.global_crops_size=32"]
    more = ["train.steps=2", "train.batch_size=8", "train.checkpoint_every=0", "data.num_workers=0"]
    train(load_config(recipe, [*tiny, *more, *ENCODER_RUNS[recipe], f"train.out={tmp_path / 'run'}"]))
    assert cli(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0  # the student: no EMA teacher
    assert cli(["export", str(tmp_path / "run"), str(tmp_path / "t.pth"), "--which", "teacher"]) == 2
    got, _ = hf_features(tmp_path / "hf", eval_images())
    assert_close(got, eval_features(tmp_path / "run"), atol=2e-5, name=f"{recipe} encoder: HF vs fastvit eval")
