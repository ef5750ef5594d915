"""Bounded resources and early refusals: each case one line and exit code 2 (or it works), nothing written first."""

import json
import os
import time

import pytest
import torch
from tiny import tiny_args

from fastvit.cli import main as cli
from fastvit.data.loader import capped_workers
from fastvit.interop.hf import hf_config_dict, native_to_hf
from fastvit.interop.io import save_state_file
from fastvit.models.vit import VisionTransformer, ViTConfig


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_num_workers_is_capped_by_the_cores_with_one_line(capsys):
    cores = len(os.sched_getaffinity(0))
    assert capped_workers(0) == 0 and capped_workers(1) == 1
    assert capsys.readouterr().err == ""
    got = capped_workers(1000)
    assert 1 <= got <= cores
    line = _one_line(capsys)
    assert line.startswith(f"fastvit: data.num_workers=1000 capped to {got} (")


def test_num_workers_share_the_node_between_its_ranks(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000")  # more ranks than cores: one worker each, no more
    assert capped_workers(8, report=False) == 1
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.seed=-1", "train.seed=-1 is out of range"),
        ("data.global_crops_size=7", "data.global_crops_size=7"),
        ("train.batch_size=1", "train.batch_size=1"),
    ],
)
def test_bad_settings_fail_before_the_run_folder_is_made(tmp_path, capsys, override, words):
    run = tmp_path / "run"
    assert cli(["train", *tiny_args(run, "train.steps=2", override)]) == 2
    assert words in _one_line(capsys)
    assert not run.exists()


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    levels = "".join(f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]," for i in range(1, 13))  # 9^12 leaves
    bomb = "[&l0 [x]," + levels + "]"
    t0 = time.perf_counter()
    assert cli(["train", *tiny_args(tmp_path / "run", f"data.source={bomb}")]) == 2
    assert time.perf_counter() - t0 < 5
    line = _one_line(capsys)
    assert "YAML aliases" in line and len(line) < 300


@pytest.mark.parametrize("gpus", ["0", "-8", "x"])
def test_plan_needs_a_positive_gpu_count(capsys, gpus):
    assert cli(["plan", "model.name=vit_s", f"gpus={gpus}"]) == 2
    assert f"gpus={gpus} is out of range" in _one_line(capsys)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "model"
    cfg = ViTConfig(width=32, depth=2, heads=2, mlp_hidden=64, patch_size=8, img_size=32, name="custom")
    model = VisionTransformer(cfg)
    model.init_weights()
    folder.mkdir()
    save_state_file(native_to_hf(model.state_dict(), "hub"), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(hf_config_dict(cfg)))
    return folder


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("hidden_size", 10**9, "hidden_size=1000000000"),
        ("hidden_size", 1e9, "hidden_size=1000000000.0 is not a positive integer"),
        ("hidden_size", -5, "hidden_size=-5 is not a positive integer"),
        ("hidden_size", None, "hidden_size=None is not a positive integer"),
        ("num_hidden_layers", 10**6, "num_hidden_layers=1000000"),
    ],
)
def test_convert_checks_config_json_against_the_weights(hf_folder, tmp_path, capsys, key, value, words):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(hf_folder / "model.safetensors")
    hf = json.loads((hf_folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**hf, key: value}))
    t0 = time.perf_counter()
    assert cli(["convert", str(folder), str(tmp_path / "out.pth")]) == 2
    assert time.perf_counter() - t0 < 10
    assert words in _one_line(capsys)
    assert not (tmp_path / "out.pth").exists()


def test_convert_works_on_the_untouched_folder(hf_folder, tmp_path, capsys):
    assert cli(["convert", str(hf_folder), str(tmp_path / "out.pth")]) == 0
    assert "converted hf -> native" in capsys.readouterr().out


def _safetensors(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize(
    "case, words",
    [
        ("text", "is not a torch checkpoint"),
        ("huge_header", "is not a safetensors file"),
        ("huge_shape", "does not fit the file"),
        ("past_the_end", "does not fit the file"),
    ],
)
def test_convert_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys, case, words):
    if case == "text":
        src = tmp_path / "notes.pth"
        src.write_text("hello, not a checkpoint\n")
    elif case == "huge_header":
        src = tmp_path / "x.safetensors"
        src.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    elif case == "huge_shape":
        entry = {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}
        src = _safetensors(tmp_path / "x.safetensors", {"w": entry}, b"\0" * 16)
    else:
        entry = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
        src = _safetensors(tmp_path / "x.safetensors", {"w": entry}, b"\0" * 8)
    assert cli(["convert", str(src), str(tmp_path / "out")]) == 2
    assert words in _one_line(capsys)


def test_a_well_formed_safetensors_file_passes_the_check(tmp_path):
    from fastvit.interop.io import check_safetensors, load_state_file

    path = tmp_path / "ok.safetensors"
    save_state_file({"w": torch.arange(6.0).view(2, 3)}, path)
    check_safetensors(path)
    assert load_state_file(path)["w"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_sigint_during_start_up_is_one_line(tmp_path, capsys, monkeypatch):
    from fastvit.train import loop

    def interrupted(cfg):
        raise KeyboardInterrupt  # what SIGINT raises before training installs its handler

    monkeypatch.setattr(loop, "build_training", interrupted)
    assert cli(["train", *tiny_args(tmp_path / "run")]) == 130
    assert _one_line(capsys) == "fastvit train: interrupted by SIGINT"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("out", ["notes.txt", "notes.txt/shards"])
def test_make_shards_into_a_file_is_one_line(tmp_path, capsys, out):
    from PIL import Image

    (tmp_path / "src" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "src" / "a" / "x.png")
    (tmp_path / "notes.txt").write_text("keep")
    assert cli(["data", "make-shards", str(tmp_path / "src"), str(tmp_path / out)]) == 2
    assert "a file is where a folder is needed" in _one_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "keep"
