"""model.init=PATH: step 0 of a run started from an exported run (HF folder, native file with heads, the run
itself) has that run's features; trained weight_g of DINOv2's layout load exactly and keep training; another
architecture is one clear line; another resolution resamples the position embeddings as DINOv2 does; a resume
reads the run's own checkpoint, not the init."""

import pytest
import torch
import torch.nn.functional as F
from export_cases import eval_features, train_tiny
from tiny import run_metrics

from fastvit.cli import main as cli
from fastvit.interop import load_state_file, save_state_file
from fastvit.interop.run_checkpoint import model_state
from fastvit.testing import assert_close

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("init") / "run")


def started_from(out, init, *extra):
    """A run folder whose step-0 checkpoint was initialised from `init`."""
    return train_tiny(out, "train.steps=0", f"model.init={init}", *extra)


@pytest.mark.parametrize("form", ["run", "hf", "native_heads"])
def test_step0_of_an_initialised_run_has_the_exported_runs_features(run, tmp_path, form):
    src = {"run": run, "hf": tmp_path / "hf", "native_heads": tmp_path / "full.safetensors"}[form]
    if form != "run":
        assert cli(["export", str(run), str(src), *(["--heads"] if form == "native_heads" else [])]) == 0
    new = started_from(tmp_path / "new", src)
    assert_close(eval_features(new), eval_features(run), atol=1e-6, name=f"step 0 from {form}")
    want = model_state(run, heads=True)
    for which in ("student", "teacher"):  # both modules start from the init
        got = model_state(new, which, heads=True)
        assert all(torch.equal(got.backbone[k], v) for k, v in want.backbone.items()), which
        same_heads = all(torch.equal(got.heads["dino_head"][k], v) for k, v in want.heads["dino_head"].items())
        assert same_heads == (form != "hf"), (which, form)  # an HF folder has no heads: new ones


def test_trained_weight_g_of_dinov2_layout_loads_exactly_and_trains(run, tmp_path):
    assert cli(["export", str(run), str(tmp_path / "full.pth"), "--heads"]) == 0
    state = load_state_file(tmp_path / "full.pth")
    g = torch.rand_like(state["teacher.dino_head.last_layer.weight_g"]) + 0.5  # trained norms, not the init's 1
    state["teacher.dino_head.last_layer.weight_g"] = g
    save_state_file(state, tmp_path / "dinov2_layout.pth")
    new = started_from(tmp_path / "new", tmp_path / "dinov2_layout.pth")
    assert torch.equal(model_state(new, "student", heads=True).heads["dino_head"]["last_layer.weight_g"], g)
    more = train_tiny(tmp_path / "more", "train.steps=2", f"model.init={tmp_path / 'dinov2_layout.pth'}")
    assert (more / "checkpoints" / "step_2").is_dir()


def test_another_architecture_is_one_line_naming_the_key(run, tmp_path, capsys):
    args = ["train", "demo", f"train.out={tmp_path / 'bad'}", f"model.init={run}", "model.width=32", "model.heads=2"]
    from tiny import TINY

    assert cli(args[:2] + TINY + args[2:]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.init=" in err and "'cls_token'" in err and "(1, 1, 32)" in err


def test_another_resolution_resamples_pos_embed_as_dinov2(run, tmp_path):
    new = started_from(
        tmp_path / "hi", run, "model.img_size=48", "data.global_crops_size=48", "data.local_crops_size=24"
    )
    pos = model_state(run).backbone["pos_embed"]
    patch = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2).double()
    # DINOv2's interpolate_pos_encoding: bicubic by scale factor (6 + 0.1) / 4
    ref = F.interpolate(patch, scale_factor=(6.1 / 4, 6.1 / 4), mode="bicubic", align_corners=False)
    ref = torch.cat([pos[:, :1].double(), ref.permute(0, 2, 3, 1).reshape(1, 36, -1)], dim=1)
    assert_close(model_state(new).backbone["pos_embed"], ref, atol=1e-6, name="resampled pos_embed")


def test_a_resumed_run_reads_its_own_checkpoint_not_the_init(run, tmp_path):
    new = started_from(tmp_path / "new", run)
    before = model_state(new, "student").backbone
    # the init is gone: a resume must not read it (step 1 has lr 0 at the end of the 1-step warmup)
    train_tiny(tmp_path / "new", "train.steps=2", f"model.init={tmp_path / 'gone.pth'}")
    assert [r["step"] for r in run_metrics(new)] == [1, 2]
    after = model_state(new, "student").backbone
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])  # it trained
    qkv = "blocks.0.attn.qkv.weight"  # one Adam step of lr <= 2e-3 from step 0, not a fresh init
    assert (after[qkv] - before[qkv]).abs().max() < 1e-2
