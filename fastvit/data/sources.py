"""Data sources: an image folder, webdataset tar shards, or the built-in dataset.

A source has `len()`, `read(i) -> (payload, label)` (payload: encoded bytes, or an already
decoded uint8 HWC array for `builtin`; label -1 when unlabelled), `num_classes` (None when
unknown), `spec`, and `index_skipped` (members dropped while indexing, e.g. a truncated tar).
"""

import glob
import itertools
import json
import logging
import os
import re
import tarfile

from fastvit.data.builtin import BuiltinSource

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SPEC_FORMS = "builtin[:train|:val], imagefolder:PATH, webdataset:PATTERN (e.g. /data/shard-{000000..000099}.tar)"


class ImageFolderSource:
    """`imagefolder:PATH`: class sub-folders give labels (sorted names); a flat folder is unlabelled."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise ValueError(f"data source imagefolder:{root}: no such folder")
        self.root, self.spec, self.index_skipped = root, f"imagefolder:{root}", 0
        subdirs = sorted(d.name for d in os.scandir(root) if d.is_dir())
        per_class = [(d, _image_files(os.path.join(root, d))) for d in subdirs]
        per_class = [(d, files) for d, files in per_class if files]
        if per_class:
            self.classes = [d for d, _ in per_class]
            self.files = [f for _, files in per_class for f in files]
            self.labels = [k for k, (_, files) in enumerate(per_class) for _ in files]
        else:
            self.classes, self.files = [], _image_files(root)
            self.labels = [-1] * len(self.files)
        self.num_classes = len(self.classes) or None
        if not self.files:
            raise ValueError(f"data source imagefolder:{root}: no image files (looked for .{', .'.join(IMAGE_EXTS)})")

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> tuple[bytes, int]:
        with open(self.files[i], "rb") as f:
            return f.read(), self.labels[i]


def _image_files(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTS]
    return out


def expand_braces(pattern: str) -> list[str]:
    """Shell-style expansion of `{000..099}` (zero-padded ranges) and `{a,b}` lists, left to right."""
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


class WebDatasetSource:
    """`webdataset:PATTERN`: tar shards; a sample is the members sharing a key (path up to the
    first dot of the basename); its image is the jpg/jpeg/png/webp member, its label the `cls`
    member (an integer) or the `label`/`cls` field of a `json` member."""

    def __init__(self, pattern: str):
        self.spec, self.index_skipped = f"webdataset:{pattern}", 0
        self.shards = [p for p in expand_braces(pattern) for p in sorted(glob.glob(p))]
        if not self.shards:
            raise ValueError(f"data source webdataset:{pattern}: no shard matches the pattern")
        self.samples = []  # (shard, image offset, image size, label member (offset, size, ext) or None)
        for s, path in enumerate(self.shards):
            self._index(s, path)
        if not self.samples:
            raise ValueError(f"data source webdataset:{pattern}: {len(self.shards)} shard(s) but no image members")
        self.num_classes = None
        self._fds, self._pid = {}, None

    def _index(self, s: int, path: str) -> None:
        size = os.path.getsize(path)
        groups: dict[str, dict] = {}
        try:
            with tarfile.open(path, "r:") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    d, base = os.path.split(m.name)
                    key, _, ext = base.partition(".")
                    groups.setdefault(os.path.join(d, key), {})[ext.lower()] = (m.offset_data, m.size)
                    if m.offset_data + m.size > size:  # kept as a sample: reading it fails, so it is counted
                        raise tarfile.ReadError(f"member {m.name} runs past the end of the file")
        except (tarfile.TarError, EOFError, OSError) as e:
            self.index_skipped += 1
            log.warning("webdataset shard %s is damaged (%s); using the members before the damage", path, e)
        for members in groups.values():
            img = next((members[e] for e in IMAGE_EXTS if e in members), None)
            if img is None:
                continue
            lab = next(((*members[e], e) for e in ("cls", "json") if e in members), None)
            self.samples.append((s, img[0], img[1], lab))

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self):
        return {**self.__dict__, "_fds": {}, "_pid": None}

    def _pread(self, s: int, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # descriptors do not survive into forked workers
            self._fds, self._pid = {}, os.getpid()
        if s not in self._fds:
            self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
        return os.pread(self._fds[s], size, offset)

    def read(self, i: int) -> tuple[bytes, int]:
        s, off, size, lab = self.samples[i]
        data = self._pread(s, off, size)
        if len(data) < size:  # a member cut off by a truncated shard
            raise OSError(f"{self.shards[s]}: image member at byte {off} is truncated ({len(data)} of {size} bytes)")
        return data, self._label(s, lab)

    def _label(self, s: int, lab) -> int:
        if lab is None:
            return -1
        raw = self._pread(s, lab[0], lab[1])
        try:
            if lab[2] == "cls":
                return int(raw.decode().strip())
            meta = json.loads(raw)
            value = meta.get("label", meta.get("cls", -1)) if isinstance(meta, dict) else -1
            return int(value) if isinstance(value, int) else -1
        except (ValueError, UnicodeDecodeError):
            return -1


def source_from_spec(spec: str, split: str = "train", *, seed: int = 0, builtin_size: int = 64, builtin_n=None):
    """A source from `builtin[:train|:val]`, `imagefolder:PATH` or `webdataset:PATTERN`.

    split picks the builtin stream when the spec names none; folders and shards are their own split.
    """
    kind, _, arg = spec.partition(":")
    if kind == "builtin":
        return BuiltinSource(arg or split, n=builtin_n, size=builtin_size, seed=seed)
    if kind in ("imagefolder", "webdataset") and not arg:
        raise ValueError(f"data source {spec!r} needs a path after the colon; valid forms: {SPEC_FORMS}")
    if kind == "imagefolder":
        return ImageFolderSource(os.path.expanduser(arg))
    if kind == "webdataset":
        return WebDatasetSource(os.path.expanduser(arg))
    raise ValueError(f"unknown data source {spec!r}; valid forms: {SPEC_FORMS}")
