"""`fastvit data make-shards SRC_FOLDER OUT_DIR [--per-shard N]`: an image folder -> webdataset tars.

Each sample becomes `<key>.<ext>` (the file's bytes, unchanged) plus `<key>.cls` (its class index)
when the folder has class sub-folders; shards are named shard-000000.tar, shard-000001.tar, ...
The printed `webdataset:` spec reads them back.
"""

import argparse
import io
import os
import tarfile

from fastvit.data.sources import ImageFolderSource


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(src: str, out_dir: str, per_shard: int = 1000, skipped: list | None = None) -> list[str]:
    """Write the shards; returns their paths. Files that cannot be read (not a regular file, e.g. a FIFO, or
    over data.max_sample_bytes' default) are left out and appended to `skipped`."""
    if per_shard < 1:
        raise ValueError(f"--per-shard must be >= 1, got {per_shard}")
    source = ImageFolderSource(src)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for start in range(0, len(source), per_shard):
        path = os.path.join(out_dir, f"shard-{start // per_shard:06d}.tar")
        try:
            with tarfile.open(path + ".tmp", "w") as tar:
                for i in range(start, min(start + per_shard, len(source))):
                    _add_sample(tar, source, i, skipped)
        except BaseException:
            os.remove(path + ".tmp")
            raise
        os.replace(path + ".tmp", path)
        paths.append(path)
    return paths


def _add_sample(tar, source, i: int, skipped: list | None) -> None:
    try:
        data, label = source.read(i)
    except OSError as e:
        if skipped is not None:
            skipped.append(f"{source.files[i]} ({e})")
        return
    ext = source.files[i].rsplit(".", 1)[-1].lower()
    _add(tar, f"{i:09d}.{ext}", data)
    if label >= 0:
        _add(tar, f"{i:09d}.cls", str(label).encode())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastvit data make-shards", description=__doc__.splitlines()[0])
    parser.add_argument("src", metavar="SRC_FOLDER")
    parser.add_argument("out", metavar="OUT_DIR")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per tar shard (default 1000)")
    args = parser.parse_args(argv)
    skipped = []
    try:
        paths = write_shards(args.src, args.out, args.per_shard, skipped)
    except ValueError as e:
        parser.error(str(e))
    if skipped:
        print(f"skipped {len(skipped)} file(s) that cannot be read, first: {skipped[0]}")
    last = len(paths) - 1
    name = f"shard-{{000000..{last:06d}}}.tar" if last else "shard-000000.tar"
    pattern = os.path.join(args.out, name)
    print(f"wrote {len(paths)} shard(s); read them with data.source=webdataset:{pattern}")
    return 0
