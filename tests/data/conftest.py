"""Small real image folders for the data tests (JPEG with class sub-folders, PNG, EXIF-rotated)."""

import io

import numpy as np
import pytest
from PIL import Image

from fastvit.data.builtin import render

SIZES = [(64, 80), (97, 61), (120, 150), (50, 50), (75, 133), (88, 70)]


def image_of(label: int, i: int) -> Image.Image:
    h, w = SIZES[i % len(SIZES)]
    arr = render(label, np.random.default_rng([label, i]), 64)
    return Image.fromarray(arr).resize((w, h), Image.BICUBIC)


def write_folder(root, n_classes=3, per_class=6, fmt="JPEG"):
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    for c in range(n_classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            opts = {"quality": 92} if fmt == "JPEG" else {}
            image_of(c, i).save(root / f"class_{c}" / f"img_{i}.{ext}", fmt, **opts)
    return root


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("jpeg"))


@pytest.fixture(scope="session")
def png_folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("png"), fmt="PNG")


def exif_rotated_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()
