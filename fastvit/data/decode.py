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


class OverPixelBudget(DecodeError):
    """An image whose header claims more pixels than data.max_pixels (not decoded)."""


# Pixel budget (data.max_pixels): a 12,000 x 12,000 PNG of 140 KB decodes to 430 MB of RGB (1.9 GB peak).
DEFAULT_MAX_PIXELS = 90_000_000


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A lazily decoded PIL image (header parsed), or DecodeError, also for images over `max_pixels`
    (checked on the header, before anything is decoded; 0 disables the check)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bad EXIF is judged by decoding; bombs by the pixel budget below
            img = Image.open(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
        raise DecodeError(f"not an image ({type(e).__name__}: {e})") from e
    w, h = img.size
    if max_pixels and w * h > max_pixels:
        raise OverPixelBudget(f"{w} x {h} pixels is over data.max_pixels={max_pixels}; not decoded")
    return img


def check_pixel_budget(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """OverPixelBudget when the header of encoded `data` claims more than max_pixels (for decoders other than
    Pillow, e.g. DALI); a header Pillow cannot parse is left to that decoder."""
    try:
        open_image(data, max_pixels)
    except OverPixelBudget:
        raise
    except DecodeError:
        pass


def _rgb_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8; 16-bit grayscale (modes I;16*, and I as Pillow reads 16-bit PNGs) scaled to 8 bits,
    not clipped (Pillow's convert("RGB") clips them, so they train as white images)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        wide = np.asarray(img).astype(np.int64).clip(0, 65535)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


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
        arr = _rgb_array(img)
    except Exception as e:  # noqa: BLE001 - truncated data, bad codecs, ...
        raise DecodeError(f"cannot decode ({type(e).__name__}: {e})") from e
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DecodeError(f"decoded to an unusable array of shape {arr.shape}")
    return arr


def decode_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Full-resolution (H, W, 3) uint8 RGB of encoded image bytes."""
    return decode_rgb(open_image(data, max_pixels))
