"""Training on webdataset shards: over HTTP from a loopback server; SIGKILL-and-resume logs the same per-step
losses; a resume with another loader worker count continues from the global shard position with one line; a
shard deleted before the resume is counted."""

import functools
import http.server
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
from test_train_single import LOSS_TERMS, _run_cli, _wait_for_step, read_metrics
from tiny import tiny_args, tiny_config

from fastvit.train import checkpoint as ckpt
from fastvit.train.loop import train

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from shardkit import write_shards  # noqa: E402


def _args(run, pattern, *extra):
    src = f"data.source=webdataset:{pattern}"
    return tiny_args(run, src, "data.val_source=", "data.shuffle_buffer=8", "train.checkpoint_every=2", *extra)


@pytest.mark.slow
def test_sigkill_and_resume_on_shards_reproduces_the_uninterrupted_losses(tmp_path):
    pattern = write_shards(tmp_path / "shards", 8, 6)
    extra = ("train.steps=6", "data.num_workers=1", "model.drop_path=0.1")
    straight = tmp_path / "straight"
    proc = _run_cli(_args(straight, pattern, *extra))
    assert proc.wait(timeout=300) == 0, proc.stdout.read()

    resumed = tmp_path / "resumed"
    proc = _run_cli(_args(resumed, pattern, *extra))
    _wait_for_step(resumed, 3, proc)  # past the step-2 checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.step_of(ckpt.latest_checkpoint(resumed)) in (2, 4)
    proc = _run_cli(_args(resumed, pattern, *extra))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    a, b = read_metrics(straight), read_metrics(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        for key in LOSS_TERMS:
            assert b[step][key] == a[step][key], (step, key)  # bit-exact: the same samples, crops and order


def test_resume_with_another_worker_count_and_a_deleted_shard(tmp_path):
    pattern = write_shards(tmp_path / "shards", 8, 6)
    run = tmp_path / "run"
    proc = _run_cli(_args(run, pattern, "train.steps=2", "data.num_workers=0"))
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    os.remove(tmp_path / "shards" / "shard-000000.tar")  # read again from the global position: missing now
    proc = _run_cli(_args(run, pattern, "train.steps=6", "data.num_workers=2"))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "data: resuming shards read by 1 rank(s) x 1 worker(s) on 1 x 2: epoch 0 continues at shard" in out
    assert "at most 16 sample(s) already seen can repeat" in out  # the group of 4 shards in flight
    rows = read_metrics(run)
    assert sorted(rows) == [1, 2, 3, 4, 5, 6] and rows[6]["skipped_shards"] == 1  # the deleted one, counted once


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_trains_on_shards_served_over_http_from_loopback(tmp_path):
    write_shards(tmp_path / "shards", 4, 6)
    handler = functools.partial(_Quiet, directory=str(tmp_path / "shards"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/shard-{{000000..000003}}.tar"
        extra = (f"data.source=webdataset:{url}", "data.val_source=", "train.steps=2", "train.checkpoint_every=0")
        run = train(tiny_config(tmp_path / "run", *extra))
    finally:
        server.shutdown()
        server.server_close()
    rows = read_metrics(run)
    assert sorted(rows) == [1, 2] and rows[2]["skipped_shards"] == 0 and rows[2]["skipped_samples"] == 0
