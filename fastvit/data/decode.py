"""Pillow decoding for the CPU path: header-only size, JPEG draft mode, RGB, EXIF orientation.

The crop table is drawn from the image's (EXIF-oriented) size, read from the header without
decoding; the JPEG is then decoded at the largest DCT reduction (1/2, 1/4, 1/8) that keeps every
crop box at least as large as its output (`augment.draft_factor`), and the boxes are rescaled
to the decoded size.
"""

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# EXIF orientations 5..8 rotate by 90 degrees, so height and width swap.
_ORIENTATION_TAG = 0x0112
_TRANSPOSED = {5, 6, 7, 8}


class DecodeError(Exception):
    """An undecodable, truncated or non-image file."""


def open_image(data: bytes) -> Image.Image:
    """A lazily decoded PIL image (header parsed), or DecodeError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning, bad EXIF: judged by decoding
            return Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
        raise DecodeError(f"not an image ({type(e).__name__}: {e})") from e


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(H, W) after EXIF orientation, from the header only."""
    w, h = img.size
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block means no orientation
        orientation = 1
    return (w, h) if orientation in _TRANSPOSED else (h, w)


def decode_rgb(img: Image.Image, reduce: int = 1) -> np.ndarray:
    """Decode to an (H, W, 3) uint8 RGB array, EXIF-oriented; JPEGs at 1/reduce scale when reduce > 1."""
    try:
        if reduce > 1 and img.format == "JPEG":
            w, h = img.size
            img.draft("RGB", (max(1, w // reduce), max(1, h // reduce)))
        img = ImageOps.exif_transpose(img)
        arr = np.asarray(img.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - truncated data, bad codecs, ...
        raise DecodeError(f"cannot decode ({type(e).__name__}: {e})") from e
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DecodeError(f"decoded to an unusable array of shape {arr.shape}")
    return arr


def decode_bytes(data: bytes) -> np.ndarray:
    """Full-resolution (H, W, 3) uint8 RGB of encoded image bytes."""
    return decode_rgb(open_image(data))
