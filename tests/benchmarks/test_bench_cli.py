import json

from fastvit.cli import main

TINY_MODEL = [
    "model.width=64",
    "model.depth=2",
    "model.heads=2",
    "model.patch_size=8",
    "data.global_crops_size=32",
    "data.local_crops_size=16",
    "data.n_local_crops=2",
    "objective.web_dino.dino_out_dim=256",
    "objective.web_dino.ibot_out_dim=256",
    "objective.web_dino.head_hidden_dim=128",
    "train.batch_size=4",
]


def test_bench_step_reports_throughput_and_mfu(tmp_path, capsys):
    assert main(["bench", "step", *TINY_MODEL, "warmup=1", "iters=2", f"out={tmp_path}"]) == 0
    out = json.loads((tmp_path / "step.json").read_text())
    assert out["images_per_s"] > 0 and out["tflops"] > 0 and 0 < out["mfu"]
    assert out["flops_per_step"] > 0 and out["peak_source"].startswith("measured")
    assert "MFU" in capsys.readouterr().out
