"""A killed `fastvit train` leaves no loader processes behind (forkserver workers watch the trainer's pid)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import tiny_args


def _children(pid):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def _descendants(pid):
    out = []
    for child in _children(pid):
        out += [child, *_descendants(child)]
    return out


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.mark.slow
def test_sigkill_of_the_trainer_ends_its_loader_workers(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = tiny_args(run, "train.steps=500", "train.checkpoint_every=0", "data.num_workers=2")
    proc = subprocess.Popen([sys.executable, "-m", "fastvit.cli", "train", *args], env=env, stdout=subprocess.DEVNULL)
    t0 = time.time()
    while not (run / "metrics.jsonl").is_file():
        assert proc.poll() is None and time.time() - t0 < 120, "the run did not log a step"
        time.sleep(0.1)
    helpers = _descendants(proc.pid)  # the forkserver, its two DataLoader workers, the resource tracker
    assert len(helpers) >= 3, helpers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while _alive(helpers) and time.time() < deadline:
        time.sleep(0.2)
    left = _alive(helpers)
    for pid in left:  # do not leak them into the rest of the test session
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the trainer was killed: {left}"


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_workers_end_with_their_forkserver_whatever_killed_it(tmp_path):
    """PR_SET_PDEATHSIG: a worker dies with its parent, the forkserver, even while the trainer still runs (the OOM
    killer may pick the forkserver), within 2 s (without it: torch's own parent check, every 5 s while idle)."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = tiny_args(run, "train.steps=500", "train.checkpoint_every=0", "data.num_workers=2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastvit.cli", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.time()
        while not (run / "metrics.jsonl").is_file():
            assert proc.poll() is None and time.time() - t0 < 120, "the run did not log a step"
            time.sleep(0.1)
        servers = [p for p in _children(proc.pid) if "forkserver" in _cmdline(p)]
        assert len(servers) == 1, servers
        workers = _children(servers[0])
        assert len(workers) == 2, workers
        proc.send_signal(signal.SIGSTOP)  # the trainer lives on, but cannot reap or restart anything
        os.kill(servers[0], signal.SIGKILL)
        deadline = time.time() + 2  # the kernel's signal is immediate; torch's own parent check runs every 5 s
        while _alive(workers) and time.time() < deadline:
            time.sleep(0.1)
        left = _alive(workers)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"workers outlived their forkserver: {left}"
    finally:
        proc.kill()
        proc.wait()
