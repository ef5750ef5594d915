"""parallel.compile=true: every block compiled on the CPU (inductor) as one graph (fullgraph=True, so a graph
break inside a block fails), and the losses of the first steps equal eager's."""

import pytest
import torch
from tiny import tiny_config

from fastvit.train.loop import build_training
from fastvit.train.step import autocast_for, train_step

SMALL = ("model.depth=1", "data.n_local_crops=0", "train.batch_size=4", "optim.warmup_steps=0")


def _losses(tmp_path, *extra, steps=2):
    cfg = tiny_config(tmp_path, *SMALL, *extra)
    run = build_training(cfg)
    batch = run.task.synthetic_batch(run.batch_per_rank, run.device)
    batches, autocast = iter(lambda: batch, None), autocast_for(cfg, run.device)
    rows = []
    for step in range(steps):
        out = train_step(run.task, run.optimizer, batches, step=step, total=10, cfg_optim=cfg.optim, autocast=autocast)
        assert out.finite
        rows.append(out.terms.tolist())
    return rows


@pytest.mark.slow  # inductor compiles the student's and the teacher's block graphs: minutes on a shared 2-core CPU
def test_compiled_blocks_match_eager(tmp_path, monkeypatch):
    eager = _losses(tmp_path / "eager")
    calls, real_compile = [], torch.compile

    def recording_compile(*args, **kwargs):
        calls.append(kwargs)
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    compiled = _losses(tmp_path / "compiled", "parallel.compile=true")
    assert len(calls) == 2 and all(c.get("fullgraph") for c in calls), calls  # student's block and teacher's
    for a, b in zip(eager, compiled):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    assert eager[1] != eager[0]  # the steps trained, so the second step compares updated weights
