"""One writer per run folder: an exclusive lock on `<run folder>/train.lock`, held while a trainer runs.

The lock is flock(2) on an open file: the kernel releases it when the process ends, however it ends (SIGKILL,
OOM kill), so a stale lock file never blocks a restart. flock conflicts between two opens of the file even in
one process, and Linux NFS clients carry it to the server as a byte-range lock, so two trainers on two nodes
(a SLURM requeue while the old job still runs) exclude each other. The file says who holds it (host, pid).
Under torchrun only rank 0 takes it: the other ranks write nothing rank 0 does not coordinate.
"""

import errno
import fcntl
import os
import socket
from pathlib import Path

from fastvit.errors import UserError

LOCK_NAME = "train.lock"
# The files a trainer writes at the top of its folder: never written through a link out of it.
RUN_FILES = (LOCK_NAME, "config.yaml", "metrics.jsonl", "eval.json")


def check_run_folder(out):
    """UserError unless `out` (train.out) names a folder that is or can be made: not empty, not a file, not
    under a file."""
    if not str(out).strip():
        raise UserError("train.out is empty: name the run folder, e.g. train.out=runs/demo")
    path = Path(out)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            what = "is" if p == path else f"is under {p}, which is"
            raise UserError(f"train.out={out} {what} a file, not a folder; set train.out to a folder")
    for name in RUN_FILES:
        file = path / name
        if file.is_symlink():
            raise UserError(f"{file} is a symbolic link; a run folder's files are its own: delete it")
        if file.exists() and not file.is_file():
            raise UserError(f"{file} is not a regular file; delete it or set train.out to another folder")
    if (path / "checkpoints").is_symlink():
        raise UserError(f"{path / 'checkpoints'} is a symbolic link; a run folder's files are its own: delete it")
    return path


class RunLock:
    """The lock of one run folder; `release()` (or leaving a `with`) gives it up, and so does the process's end."""

    def __init__(self, run_dir):
        """Creates the run folder (and its parents) when missing; UserError when another process holds it."""
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / LOCK_NAME
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            self.fd = os.open(self.path, flags, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f"{self.path} is a symbolic link; delete it") from None
            raise
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise UserError(
                f"{Path(run_dir)} is in use by another trainer ({holder}); wait for it to end, stop it, or set "
                "train.out to another folder"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor of this open file drops the flock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
