"""Asynchronous checkpoints: a run with train.async_checkpoint=true trains and resumes like a blocking one; a
SIGKILL while a write is in flight (and training steps run beside it) leaves the previous checkpoint as latest."""

import subprocess
import sys
import textwrap

import torch
from tiny import copy_run_until, run_metrics, tiny_config

from fastvit.train import checkpoint as ckpt
from fastvit.train.loop import train

RUN = ("train.steps=4", "train.checkpoint_every=2", "optim.warmup_steps=1")
COMPARED = ("loss", "dino_global", "dino_local", "ibot", "koleo", "grad_norm")


def test_async_checkpoints_match_blocking_ones_and_resume(tmp_path):
    train(tiny_config(tmp_path / "sync", *RUN, "train.async_checkpoint=false"))
    train(tiny_config(tmp_path / "async", *RUN, "train.async_checkpoint=true"))
    ref, got = run_metrics(tmp_path / "sync"), run_metrics(tmp_path / "async")
    assert [(r["step"], [r[k] for k in COMPARED]) for r in got] == [(r["step"], [r[k] for k in COMPARED]) for r in ref]
    latest = ckpt.latest_checkpoint(tmp_path / "async")
    assert latest.name == "step_4" and ckpt.verify_checkpoint(latest) is None
    assert sorted(p.name for p in (tmp_path / "async" / "checkpoints").glob("step_*")) == ["step_2", "step_4"]

    copy_run_until(tmp_path / "async", tmp_path / "resumed", 2)  # the async step-2 checkpoint resumes exactly
    train(tiny_config(tmp_path / "resumed", *RUN, "train.async_checkpoint=true"))
    resumed = run_metrics(tmp_path / "resumed")
    assert [[r[k] for k in COMPARED] for r in resumed[2:]] == [[r[k] for k in COMPARED] for r in ref[2:]]


# The child saves step 1 (blocking), then starts an async save of step 2 whose writer pauses before the manifest,
# and runs matmul "steps" while it is in flight; the test SIGKILLs it there.
CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from fastvit.train import checkpoint as ckpt
    from fastvit.train.async_checkpoint import AsyncCheckpointer

    out = sys.argv[1]
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 96)
    ckpt.save_checkpoint(out, 1, {"student": model.state_dict()}, {"step": 1})
    write_manifest = ckpt._write_manifest

    def paused(*args, **kw):
        print("writing", flush=True)
        time.sleep(600)
        write_manifest(*args, **kw)

    ckpt._write_manifest = paused
    with torch.no_grad():
        model.weight.add_(1.0)
    saver = AsyncCheckpointer()
    saver.save(out, 2, {"student": model.state_dict()}, {"step": 2})
    for i in range(100000):
        torch.randn(64, 64) @ torch.randn(64, 64)
        print(f"step {i} in_flight={saver.in_flight}", flush=True)
        time.sleep(0.01)
    """
)


def test_sigkill_during_an_async_write_leaves_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        seen_writing, steps_in_flight = False, 0
        for line in child.stdout:
            seen_writing = seen_writing or line.startswith("writing")
            steps_in_flight += seen_writing and line.startswith("step") and "in_flight=True" in line
            if steps_in_flight >= 3:  # training steps ran while the write was in flight
                break
    finally:
        child.kill()
        child.wait()
    assert steps_in_flight >= 3
    assert (out / "checkpoints" / "step_2.tmp").is_dir()  # the write had begun
    latest = ckpt.latest_checkpoint(out)
    assert latest.name == "step_1"
    torch.manual_seed(0)
    expected = torch.nn.Linear(64, 96)
    loaded = ckpt.load_module(latest, torch.nn.Linear(64, 96), "student")
    assert torch.equal(loaded.weight, expected.weight) and torch.equal(loaded.bias, expected.bias)
