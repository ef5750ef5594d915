"""Multi-crop augmentation parameters: the config and the per-sample draw of the crop table.

Every crop of a sample is described by one float32 row of `NUM_COLS` values (the column names
below, mirrored in csrc/augment/pixel_math.h). Rows are drawn in Python from a generator seeded
by (seed, epoch, sample index), so a batch is reproducible no matter which worker builds it.

Semantics follow the DINOv2 pipeline: random-resized-crop (torchvision's sampling), flip p=0.5,
colour jitter with probability `jitter_p` whose four ops run in a random order (as torchvision's
ColorJitter does), grayscale, Gaussian blur (sigma uniform in `blur_sigma`), solarize,
mean/std normalisation.
"""

import math
from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Columns of the crop table (keep in step with enum Col in csrc/augment/pixel_math.h).
IMAGE, Y0, X0, BOX_H, BOX_W, SIZE, FLIP, JITTER = 0, 1, 2, 3, 4, 5, 6, 7
BRIGHTNESS, CONTRAST, SATURATION, HUE, ORDER0 = 8, 9, 10, 11, 12
GRAY, SIGMA, SOLARIZE = 16, 17, 18
NUM_COLS = 20


@dataclass(frozen=True)
class MultiCropConfig:
    """Crop counts, sizes and augmentation strengths (defaults: the Web-DINO recipe)."""

    global_size: int = 224
    local_size: int = 98
    n_global: int = 2
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p_global: tuple[float, ...] = (1.0, 0.1)  # one per global crop (the last repeats)
    blur_p_local: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_radius: int = 4  # kernel size 2 * radius + 1 = 9
    solarize_p_global: tuple[float, ...] = (0.0, 0.2)
    solarize_p_local: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.n_global < 1 or self.n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {self.n_global} and {self.n_local}")
        if not 0 <= self.blur_radius <= 32:
            raise ValueError(f"blur_radius must be in [0, 32], got {self.blur_radius}")
        sizes = [self.global_size] + ([self.local_size] if self.n_local else [])
        if min(sizes) <= self.blur_radius:
            raise ValueError(f"crop sizes {sizes} must exceed blur_radius={self.blur_radius} (reflect padding)")
        for name in ("global_scale", "local_scale", "ratio", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        if self.hue > 0.5:
            raise ValueError(f"hue must be <= 0.5 (a shift in turns), got {self.hue}")

    @property
    def n_crops(self) -> int:
        return self.n_global + self.n_local

    def crop_size(self, k: int) -> int:
        """Output side of crop k (globals first, then locals)."""
        return self.global_size if k < self.n_global else self.local_size


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for one sample of one epoch (stream separates independent uses)."""
    return np.random.default_rng([seed, epoch, index, stream])


def random_resized_box(rng: np.random.Generator, H: int, W: int, scale, ratio) -> tuple[int, int, int, int]:
    """(top, left, height, width) with torchvision RandomResizedCrop sampling (10 tries, then center)."""
    area = H * W
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= W and 0 < h <= H:
            return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
    in_ratio = W / H
    if in_ratio < ratio[0]:
        w, h = W, round(W / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = H, round(H * ratio[1])
    else:
        h, w = H, W
    return (H - h) // 2, (W - w) // 2, h, w


def _draw_crop(rng: np.random.Generator, cfg: MultiCropConfig, k: int, H: int, W: int) -> np.ndarray:
    is_global = k < cfg.n_global
    row = np.zeros(NUM_COLS, np.float64)
    scale = cfg.global_scale if is_global else cfg.local_scale
    row[Y0], row[X0], row[BOX_H], row[BOX_W] = random_resized_box(rng, H, W, scale, cfg.ratio)
    row[SIZE] = cfg.crop_size(k)
    row[FLIP] = rng.random() < cfg.flip_p
    if rng.random() < cfg.jitter_p:
        row[JITTER] = 1
        row[BRIGHTNESS] = rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
        row[CONTRAST] = rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
        row[SATURATION] = rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
        row[HUE] = rng.uniform(-cfg.hue, cfg.hue)
        row[ORDER0 : ORDER0 + 4] = rng.permutation(4)
    row[GRAY] = rng.random() < cfg.gray_p
    blur_p = cfg.blur_p_global[min(k, len(cfg.blur_p_global) - 1)] if is_global else cfg.blur_p_local
    if rng.random() < blur_p:
        row[SIGMA] = rng.uniform(*cfg.blur_sigma)
    sol_p = cfg.solarize_p_global[min(k, len(cfg.solarize_p_global) - 1)] if is_global else cfg.solarize_p_local
    row[SOLARIZE] = rng.random() < sol_p
    return row


def draw_sample_params(
    cfg: MultiCropConfig, H: int, W: int, seed: int, epoch: int, index: int, stream: int = 0
) -> np.ndarray:
    """Crop table rows (n_crops, NUM_COLS) float64 of one sample whose image is H x W (IMAGE column 0).

    stream > 0 gives a fresh draw for the stream-th replacement of an unreadable sample.
    """
    if H < 1 or W < 1:
        raise ValueError(f"image size must be positive, got {H} x {W}")
    rng = sample_rng(seed, epoch, index, stream)
    return np.stack([_draw_crop(rng, cfg, k, H, W) for k in range(cfg.n_crops)])


def rescale_boxes(rows: np.ndarray, H: int, W: int, H_new: int, W_new: int) -> np.ndarray:
    """Rows whose crop boxes, drawn for an H x W image, address the same region of an H_new x W_new decode."""
    out = rows.copy()
    out[:, [Y0, BOX_H]] *= H_new / H
    out[:, [X0, BOX_W]] *= W_new / W
    return out


def draft_factor(rows: np.ndarray) -> int:
    """Largest JPEG DCT reduction (1, 2, 4, 8) that keeps every crop box at least its output size."""
    shrink = float(np.min(np.minimum(rows[:, BOX_H], rows[:, BOX_W]) / rows[:, SIZE]))
    for k in (8, 4, 2):
        if shrink >= k:
            return k
    return 1
