"""Atomic file writes: a reader sees the old content or the new one, never a part of either."""

import os
import tempfile
from pathlib import Path


def write_atomic(path, data):
    """Writes `data` (str or bytes) to `path` through a temporary file in the same folder, fsynced and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~process_umask())  # mkstemp makes 0600; a new file gets what open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _quiet():
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def process_umask():
    """The process's umask, read without changing it where /proc tells it (os.umask alone sets it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder):
    """Makes a rename in `folder` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def update_json(path, key, value):
    """Sets `key` of the JSON object in `path` (a new object when the file is missing, unreadable or a symbolic
    link), atomically."""
    import json

    path = Path(path)
    try:  # O_NOFOLLOW: a link in the file's place is replaced by the new file, never read through
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            previous = json.loads(f.read())
    except (OSError, ValueError):
        previous = {}
    if not isinstance(previous, dict):
        previous = {}
    previous[key] = value
    write_atomic(path, json.dumps(previous, indent=2) + "\n")
    return previous
