"""Errors a user can cause and fix (a config key, a data file, a checkpoint, a full disk).

`fastvit.cli.main` prints a UserError as one line and exits 2; anything else keeps its traceback,
since it is a bug. UserError is a ValueError, so code that catches ValueError for bad input keeps working.
"""

import errno

# OSError numbers that mean the machine, not fastvit, is at fault: the user frees space or fixes permissions.
USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE}
# A path whose kind is wrong: a file where a folder is needed (an output folder named like an existing file) or
# the reverse.
PATH_KIND_ERRORS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR}


class UserError(ValueError):
    """Something the user can fix; the message names the file or key and what to do."""


class StopRequested(Exception):
    """SIGTERM / SIGINT stopped training after its checkpoint; the command exits 128 + the signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def os_error_message(e):
    """One line for an OSError a user can fix (disk full, read-only, permissions), or None for other errors."""
    if isinstance(e, OSError) and e.errno in PATH_KIND_ERRORS and e.filename:
        return f"{e.strerror}: {e.filename}: a file is where a folder is needed, or the reverse; name another path"
    if not isinstance(e, OSError) or e.errno not in USER_OS_ERRORS:
        return None
    where = f" writing {e.filename}" if e.filename else ""
    hint = "free space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check the permissions of the folder"
    return f"{e.strerror or e}{where}: {hint}, or set train.out to another folder"


def user_os_error(exc):
    """The first OSError a user can fix in `exc`'s chain of causes (DCP wraps its writers' errors), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if os_error_message(exc):
            return exc
        failures = getattr(exc, "failures", None)  # DCP's CheckpointException: {rank: (exception, traceback)}
        for inner in failures.values() if isinstance(failures, dict) else ():
            found = user_os_error(inner[0] if isinstance(inner, tuple) else inner)
            if found is not None:
                return found
        exc = exc.__cause__ or exc.__context__
    return None


def one_line(e):
    """The message of an error as one line; an error re-raised from a DataLoader worker (which appends the
    worker's traceback) gives the worker's own message."""
    text = str(e).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def refused_global(e):
    """What torch.load(weights_only=True) refused, e.g. 'posix.system', from its UnpicklingError."""
    import re

    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return m.group(1).strip() if m else "an object torch.load(weights_only=True) does not read"
