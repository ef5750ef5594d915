"""Small real webdataset shards for the stream tests: PNG images with a `cls` label, written with tarfile."""

import io
import tarfile

import numpy as np
from PIL import Image


def png(label: int, i: int, size: int = 24) -> bytes:
    rng = np.random.default_rng([label, i])
    arr = rng.integers(0, 255, (size, size + i % 5, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder, n_shards: int, per_shard: int) -> str:
    """Shards shard-000000.tar ...; sample k of shard s has key s_k, label (s * per_shard + k) % 7. The pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with tarfile.open(folder / f"shard-{s:06d}.tar", "w") as tar:
            for k in range(per_shard):
                add(tar, f"{s:04d}_{k:04d}.png", png(s, k))
                add(tar, f"{s:04d}_{k:04d}.cls", str((s * per_shard + k) % 7).encode())
    return str(folder / f"shard-{{000000..{n_shards - 1:06d}}}.tar")
