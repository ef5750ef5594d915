"""Data sources: an image folder, webdataset tar shards, or the built-in dataset.

A source has `len()`, `read(i) -> (payload, label)` (payload: encoded bytes, or an already
decoded uint8 HWC array for `builtin`; label -1 when unlabelled), `num_classes` (None when
unknown), `spec`, and `index_skipped` (damaged shards and samples met while reading them into memory).
`webdataset:` shards are a stream for training (`ShardSource`, fastvit.data.stream).
"""

import logging
import os

import numpy as np

from fastvit.data.builtin import BuiltinSource
from fastvit.data.shardio import (
    DEFAULT_MAX_SAMPLE_BYTES,
    IMAGE_EXTS,
    Damage,
    is_url,
    open_regular,
    parse_label,
    shard_list,
    tar_samples,
)
from fastvit.data.stream import shard_order

log = logging.getLogger(__name__)

SPEC_FORMS = "builtin[:train|:val], imagefolder:PATH, webdataset:PATTERN (e.g. /data/shard-{000000..000099}.tar)"


class ImageFolderSource:
    """`imagefolder:PATH`: class sub-folders give labels (sorted names); a flat folder is unlabelled.

    Memory: the file list and one int32 label per file. Only regular files are read (a FIFO, a device, a link to
    one is refused before anything blocks on it) and only up to max_sample_bytes (from the stat, before reading);
    the loader skips and counts what is refused."""

    def __init__(self, root: str, *, max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES):
        if not os.path.isdir(root):
            raise ValueError(f"data source imagefolder:{root}: no such folder")
        self.root, self.spec, self.index_skipped = root, f"imagefolder:{root}", 0
        self.max_sample_bytes = max_sample_bytes
        subdirs = sorted(d.name for d in os.scandir(root) if d.is_dir())
        per_class = [(d, _image_files(os.path.join(root, d))) for d in subdirs]
        per_class = [(d, files) for d, files in per_class if files]
        if per_class:
            self.classes = [d for d, _ in per_class]
            self.files = [f for _, files in per_class for f in files]
            counts = [len(files) for _, files in per_class]
            self.labels = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        else:
            self.classes, self.files = [], _image_files(root)
            self.labels = np.full(len(self.files), -1, dtype=np.int32)
        self.num_classes = len(self.classes) or None
        if not self.files:
            raise ValueError(f"data source imagefolder:{root}: no image files (looked for .{', .'.join(IMAGE_EXTS)})")

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> tuple[bytes, int]:
        with open_regular(self.files[i]) as f:
            size = os.fstat(f.fileno()).st_size
            if size > self.max_sample_bytes:
                raise OSError(f"{self.files[i]} has {size} bytes, over data.max_sample_bytes={self.max_sample_bytes}")
            data = f.read(self.max_sample_bytes + 1)  # the file may have grown since the stat
            if len(data) > self.max_sample_bytes:
                raise OSError(f"{self.files[i]} has grown over data.max_sample_bytes={self.max_sample_bytes}")
            return data, int(self.labels[i])


def _image_files(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTS]
    return out


class ShardSource:
    """`webdataset:PATTERN`: tar shards, read as a stream (fastvit.data.stream); nothing is opened here. A sample
    is the members sharing a key; its image the jpg/jpeg/png/webp member, its label the `cls` member or the
    `label` / `cls` field of a `json` member, its caption the `txt` member or the `caption` / `text` field.

    Map-style use (`len`, `read(i)`; evaluation) reads `take(n)`: the samples of the first shards of a seeded
    shard order, held in memory; only the shards needed for n samples are read. Training streams the shards (the
    CLIP captions come with the stream's samples)."""

    def __init__(self, pattern: str, *, seed: int = 0, max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES):
        self.spec, self.shards, self.num_classes = f"webdataset:{pattern}", shard_list(pattern), None
        ends = [p for p in {self.shards[0], self.shards[-1]} if not is_url(p)]
        if ends and not any(os.path.exists(p) for p in ends):  # two stats, not a walk: a pattern naming nothing
            raise ValueError(f"data source {self.spec}: no shard matches the pattern (neither {ends[0]} nor the last)")
        self.seed, self.max_sample_bytes, self._all = seed, max_sample_bytes, None

    def take(self, n: int = 0) -> "MemorySource":
        """The first n samples (0: all) of the shards in the seeded order of epoch 0, read in that order."""
        damage, samples = Damage(), []
        for s in shard_order(len(self.shards), self.seed, 0):
            for _, members in tar_samples(self.shards[int(s)], damage, self.max_sample_bytes):
                image = next(members[e] for e in IMAGE_EXTS if e in members)
                samples.append((image, parse_label(members)))
                if n and len(samples) == n:
                    return MemorySource(self.spec, samples, damage)
        if not samples:
            raise ValueError(f"data source {self.spec}: {len(self.shards)} shard(s) but no readable sample")
        return MemorySource(self.spec, samples, damage)

    def _memory(self) -> "MemorySource":
        if self._all is None:
            self._all = self.take(0)
        return self._all

    def __len__(self) -> int:
        return len(self._memory())

    def read(self, i: int) -> tuple[bytes, int]:
        return self._memory().read(i)

    @property
    def index_skipped(self) -> int:
        return self._memory().index_skipped


class MemorySource:
    """Samples read from shards, held in memory: (image bytes, label) each."""

    def __init__(self, spec: str, samples: list, damage: Damage):
        self.spec, self.samples, self.num_classes = spec, samples, None
        self.index_skipped = damage.shards + damage.samples

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> tuple[bytes, int]:
        return self.samples[i]


def source_from_spec(
    spec: str,
    split: str = "train",
    *,
    seed: int = 0,
    builtin_size: int = 64,
    builtin_n=None,
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES,
    max_images: int | None = None,
):
    """A source from `builtin[:train|:val]`, `imagefolder:PATH` or `webdataset:PATTERN`.

    split picks the builtin stream when the spec names none; folders and shards are their own split. max_images
    (evaluation): for shards, the in-memory `take(max_images)` (0: all), reading only the shards it needs.
    """
    kind, _, arg = spec.partition(":")
    if kind == "builtin":
        return BuiltinSource(arg or split, n=builtin_n, size=builtin_size, seed=seed)
    if kind in ("imagefolder", "webdataset") and not arg:
        raise ValueError(f"data source {spec!r} needs a path after the colon; valid forms: {SPEC_FORMS}")
    if kind == "imagefolder":
        return ImageFolderSource(os.path.expanduser(arg), max_sample_bytes=max_sample_bytes)
    if kind == "webdataset":
        source = ShardSource(arg, seed=seed, max_sample_bytes=max_sample_bytes)
        return source if max_images is None else source.take(max_images)
    raise ValueError(f"unknown data source {spec!r}; valid forms: {SPEC_FORMS}")
