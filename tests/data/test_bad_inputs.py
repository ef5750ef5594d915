"""Bad inputs are decoded right or skipped and counted: 16-bit PNGs, pixel bombs, truncated tar members, folders
of broken files."""

import io
import struct
import tarfile
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastvit.data import augment as A
from fastvit.data.build import build_loader
from fastvit.data.decode import DecodeError, decode_bytes, open_image
from fastvit.data.loader import MultiCropDataset
from fastvit.data.shardio import Damage, tar_samples
from fastvit.data.sources import ImageFolderSource
from fastvit.errors import UserError, one_line

CROPS = A.MultiCropConfig(global_size=32, local_size=16, n_local=2)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_16_bit_grayscale_png_is_scaled_to_8_bits():
    wide = (np.arange(40 * 50, dtype=np.int64).reshape(40, 50) * 32).astype(np.uint16)  # 0 .. 63968
    rgb = decode_bytes(_png(wide))
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    expected = np.round(wide / 257.0).astype(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1  # not clipped to white
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb.mean() < 200


def _png_claiming(width, height):
    """A small PNG whose header claims width x height pixels (what a 140 KB decompression bomb looks like)."""
    data = bytearray(_png(np.zeros((8, 8), np.uint8)))
    ihdr = 8  # after the signature: length, b"IHDR", 13 bytes, CRC
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def test_an_image_over_the_pixel_budget_is_refused_before_decoding(tmp_path):
    bomb = _png_claiming(12_000, 12_000)
    t0 = time.perf_counter()
    with pytest.raises(DecodeError, match="12000 x 12000 pixels is over data.max_pixels"):
        open_image(bomb)
    assert time.perf_counter() - t0 < 0.5
    assert open_image(bomb, max_pixels=0).size == (12_000, 12_000)  # 0 disables the budget

    (tmp_path / "a_bomb.png").write_bytes(bomb)
    (tmp_path / "b_fine.png").write_bytes(_png(np.full((40, 40, 3), 90, np.uint8)))
    sample = MultiCropDataset(ImageFolderSource(str(tmp_path)), CROPS)[(0, 0)]
    assert sample.skipped == 1 and sample.image.shape == (40, 40, 3)  # replaced by the next file and counted
    small_budget = MultiCropDataset(ImageFolderSource(str(tmp_path)), CROPS, max_pixels=1000)
    with pytest.raises(UserError, match="cannot be read"):
        small_budget[(0, 0)]


def test_a_truncated_tar_member_is_counted(tmp_path):
    path = tmp_path / "shard-000000.tar"
    images = [_png(np.full((30 + i, 40, 3), 40 * i, np.uint8)) for i in range(3)]
    with tarfile.open(path, "w") as tar:
        for i, data in enumerate(images):
            info = tarfile.TarInfo(f"{i:09d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = path.read_bytes()
    cut = raw.index(images[2]) + len(images[2]) // 2  # in the middle of the last image
    path.write_bytes(raw[:cut])
    damage = Damage()
    assert [o for o, _ in tar_samples(str(path), damage)] == [0, 1]
    assert damage.shards == 1 and damage.samples == 1  # the shard's damage and the sample it cut, counted


def test_a_folder_of_only_broken_files_is_one_user_error_from_a_worker(tmp_path):
    for i in range(20):
        (tmp_path / f"img_{i:02d}.jpg").write_bytes(b"\xff\xd8 broken" * (i + 1))
    loader = build_loader(f"imagefolder:{tmp_path}", batch_size=4, crops=CROPS, num_workers=1)
    with pytest.raises(UserError) as info:
        next(iter(loader))
    line = one_line(info.value)
    assert line.startswith(f"imagefolder:{tmp_path}: 16 consecutive samples") and "Traceback" not in line


def test_data_max_pixels_reaches_the_loader(tmp_path):
    from fastvit.config import load_config
    from fastvit.train.tasks import build_task

    (tmp_path / "big.png").write_bytes(_png(np.zeros((40, 40, 3), np.uint8)))  # 1600 pixels
    (tmp_path / "small.png").write_bytes(_png(np.zeros((20, 20, 3), np.uint8)))  # 400 pixels
    cfg = load_config("demo", [f"data.source=imagefolder:{tmp_path}", "data.max_pixels=1000", "data.num_workers=0"])
    task = build_task(cfg, torch.device("cpu"))
    loader = task.build_loader(batch_size=2, rank=0, world_size=1, device=torch.device("cpu"))
    assert loader.dataset.max_pixels == 1000
    assert [loader.dataset[(0, i)].skipped for i in range(2)] == [1, 0]  # big.png sorts first: replaced, counted
