"""SIGTERM reaching one rank of two: both agree (fastvit.train.loop._StopRequest), stop after the same step,
write one checkpoint together and exit as preempted (128 + 15) on both ranks."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from fastvit.errors import StopRequested
from fastvit.train import checkpoint as ckpt
from fastvit.train.loop import train


def _signal_self_after_first_logged_step(run_dir):
    metrics = Path(run_dir) / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)


def _rank(rank, world, out):
    torch.set_num_threads(1)
    if rank == 1:  # only this rank is signalled
        threading.Thread(target=_signal_self_after_first_logged_step, args=(out,), daemon=True).start()
    try:
        train(tiny_config(out, "train.steps=200", "train.checkpoint_every=0", "parallel.data_parallel=fsdp"))
    except StopRequested as e:
        return e.exit_code
    return 0


@pytest.mark.multirank
def test_sigterm_on_one_rank_stops_both_after_the_same_step(tmp_path):
    from fastvit.testing import run_ranks

    out = tmp_path / "run"
    codes = run_ranks(_rank, 2, str(out))
    assert codes == [128 + signal.SIGTERM] * 2
    step = ckpt.step_of(ckpt.latest_checkpoint(out))
    assert 1 <= step < 200 and ckpt.verify_checkpoint(ckpt.latest_checkpoint(out)) is None
