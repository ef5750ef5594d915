"""Reading webdataset tar shards as sequential streams, local or remote, with damage counted.

A shard is opened only when a loader worker reaches it: a local path with `os.open` (only a regular file is
read: a FIFO or a device is refused before anything blocks on it), a URL (`s3://`, `gs://`, `http(s)://`, ...)
through fsspec, the ecosystem's file-system layer, which takes credentials from each store's usual environment.
The tar is read front to back (`tarfile` stream mode, one open file per shard in flight), never seeked, so an
object store serves it as one streamed GET. A sample is the run of members sharing a key (the path up to the
first dot of the basename), as the webdataset format defines it.
"""

import glob
import itertools
import json
import logging
import os
import re
import stat
import tarfile
from dataclasses import dataclass

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
DEFAULT_MAX_SAMPLE_BYTES = 64 << 20


def expand_braces(pattern: str) -> list[str]:
    """Shell-style expansion of `{000..099}` (zero-padded ranges) and `{a,b}` lists, left to right; touches no
    file system (200,000 names in well under a second)."""
    parts = re.split(r"(\{[^{}]*\})", pattern)
    choices = []
    for part in parts:
        m = re.fullmatch(r"\{(\d+)\.\.(\d+)\}", part)
        if m:
            lo, hi = m.groups()
            choices.append([str(k).zfill(len(lo)) for k in range(int(lo), int(hi) + 1)])
        elif part.startswith("{") and part.endswith("}") and "," in part:
            choices.append(part[1:-1].split(","))
        else:
            choices.append([part])
    return ["".join(c) for c in itertools.product(*choices)]


def is_url(path: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path) is not None and not path.startswith("file://")


def shard_list(pattern: str) -> list[str]:
    """The shards a `webdataset:` pattern names, in order. Braces expand without touching the file system; a
    local pattern with glob characters (and no braces) is globbed. A named shard that is missing is not
    dropped here: the stream counts it when it reaches it."""
    pattern = pattern.removeprefix("file://")
    if "{" not in pattern and not is_url(pattern) and any(c in pattern for c in "*?["):
        shards = sorted(glob.glob(os.path.expanduser(pattern)))
    else:
        shards = [p if is_url(p) else os.path.expanduser(p) for p in expand_braces(pattern)]
    if not shards:
        raise ValueError(f"data source webdataset:{pattern}: no shard matches the pattern")
    return shards


def open_regular(path: str):
    """A binary file object for a local path, only when it is a regular file (checked on the open descriptor,
    opened non-blocking so that a FIFO cannot hang the open). OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=1 << 20)
    except BaseException:
        os.close(fd)
        raise


def open_shard(path: str):
    """A sequential binary stream of one shard (local or remote)."""
    if not is_url(path):
        return open_regular(path)
    import fsspec

    # block_size=0: a plain streamed GET for http(s), no range requests (a server need not support them)
    kwargs = {"block_size": 0} if path.startswith(("http://", "https://")) else {}
    return fsspec.open(path, "rb", **kwargs).open()


def _remote_errors() -> tuple:
    """What a remote read can raise besides OSError (fsspec's http client: aiohttp's payload errors)."""
    try:
        import aiohttp
    except ImportError:
        return ()
    return (aiohttp.ClientError,)


READ_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError, *_remote_errors())


@dataclass
class Damage:
    """Counts of what a stream skipped: shards (missing, unreadable, truncated, broken header) and samples
    (no image, over data.max_sample_bytes, unreadable or undecodable)."""

    shards: int = 0
    samples: int = 0


def parse_label(members: dict) -> int:
    """The `cls` member (an integer) or the `label` / `cls` field of a `json` member; -1 when absent."""
    try:
        if "cls" in members:
            return int(members["cls"].decode().strip())
        if "json" in members:
            meta = json.loads(members["json"])
            value = meta.get("label", meta.get("cls", -1)) if isinstance(meta, dict) else -1
            return value if isinstance(value, int) else -1
    except (ValueError, UnicodeDecodeError):
        pass
    return -1


def parse_caption(members: dict) -> str | None:
    """The `txt` member, else the `caption` / `text` field of a `json` member."""
    try:
        if "txt" in members:
            return members["txt"].decode("utf-8", "replace").strip()
        if "json" in members:
            meta = json.loads(members["json"])
            if isinstance(meta, dict):
                text = meta.get("caption", meta.get("text"))
                return text if isinstance(text, str) else None
    except (ValueError, UnicodeDecodeError):
        pass
    return None


def tar_samples(path: str, damage: Damage, max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES):
    """Yields (ordinal, members {ext: bytes}) of one shard in file order; ordinal counts the samples of the shard
    (skipped ones included), so it names a sample whatever was damaged around it. Damage is counted in `damage`
    with one warning naming the shard; a member declaring more than max_sample_bytes is never read."""
    ordinal, key, members, oversize, size = 0, None, {}, False, 0

    def flush():
        nonlocal ordinal
        out = None
        if key is not None:
            if oversize or not any(e in members for e in IMAGE_EXTS):
                damage.samples += 1
            else:
                out = (ordinal, members)
            ordinal += 1
        return out

    try:
        f = open_shard(path)
    except READ_ERRORS as e:
        damage.shards += 1
        log.warning("skipping webdataset shard %s: cannot open it (%s)", path, e)
        return
    with f:
        try:
            with tarfile.open(fileobj=f, mode="r|", tarinfo=_StrictInfo) as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    d, base = os.path.split(m.name)
                    k, _, ext = base.partition(".")
                    k = os.path.join(d, k)
                    if k != key:
                        done = flush()
                        if done is not None:
                            yield done
                        key, members, oversize, size = k, {}, False, 0
                    size += m.size
                    if size > max_sample_bytes:  # the sample's members so far, from the headers: never allocated
                        oversize = True
                        _drain(tar.extractfile(m), m)
                        continue
                    data = tar.extractfile(m).read()
                    if len(data) < m.size:
                        raise tarfile.ReadError(f"member {m.name} is cut off ({len(data)} of {m.size} bytes)")
                    members[ext.lower()] = data
        except (BrokenTar, *READ_ERRORS) as e:
            damage.shards += 1
            if key is not None and not isinstance(e, BrokenTar):  # the sample whose data the damage cut into
                damage.samples += 1
                ordinal += 1
                key = None  # (at a broken header, the members before it are whole: that sample is kept)
            log.warning(
                "webdataset shard %s is damaged (%s); using the %d sample(s) before the damage", path, e, ordinal
            )
        done = flush()
        if done is not None:
            yield done


class BrokenTar(Exception):
    """A header that is not a valid one, or the data ending where a header should be."""


class _StrictInfo(tarfile.TarInfo):
    """tarfile ends an archive quietly at a broken header or where a shard was cut at a header boundary (as if it
    had reached the end): here only the end-of-archive block ends it, anything else is damage."""

    @classmethod
    def fromtarfile(cls, tarfile_):
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError, tarfile.InvalidHeaderError) as e:
            raise BrokenTar(f"{type(e).__name__.removesuffix('Error')} at byte {tarfile_.offset}: {e}") from None


def _drain(member, info) -> None:
    """Reads past a member in 1 MiB pieces, keeping none (tarfile's own skip on a stream loops over the declared
    size even after the end of the data: minutes for a header declaring 100 GB)."""
    left = info.size
    while left > 0:
        got = len(member.read(min(left, 1 << 20)))
        if not got:
            raise tarfile.ReadError(f"member {info.name} declares {info.size} bytes but the shard ends before")
        left -= got
