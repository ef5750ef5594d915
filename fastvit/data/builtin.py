"""The built-in dataset: procedurally rendered shapes, no files, deterministic from a seed.

Ten classes of filled shapes and patterned shapes (disk, square, triangle, ring, cross, star,
striped disk, checkered disk, two dots, crescent) at a random position, scale and rotation, in
random foreground/background colours over a noisy, shaded background. Colour carries no class
information, so a model has to learn shape to separate them. Sample i of a split is rendered from
a generator seeded by (seed, split, i); `train` and `val` are disjoint streams.
"""

import numpy as np

CLASSES = ("disk", "square", "triangle", "ring", "cross", "star", "stripes", "checker", "dots", "crescent")
_SPLITS = {"train": 0, "val": 1}


def _shape_mask(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of class k in shape coordinates (u, v), unit scale."""
    r = np.hypot(u, v)
    if k == 0:
        return r < 0.9
    if k == 1:
        return np.maximum(abs(u), abs(v)) < 0.75
    if k == 2:
        return (v > -0.5) & (v < 1 - np.sqrt(3) * abs(u) * 1.1)
    if k == 3:
        return (r > 0.55) & (r < 0.95)
    if k == 4:
        return ((abs(u) < 0.28) & (abs(v) < 0.95)) | ((abs(v) < 0.28) & (abs(u) < 0.95))
    if k == 5:
        return r < 0.5 + 0.4 * np.cos(5 * np.arctan2(v, u))
    if k == 6:
        return (r < 0.95) & (np.sin(u * 3.5 * np.pi) > 0)
    if k == 7:
        return (r < 0.95) & ((np.floor(u * 2.2) + np.floor(v * 2.2)) % 2 == 0)
    if k == 8:
        return (np.hypot(u - 0.5, v) < 0.38) | (np.hypot(u + 0.5, v) < 0.38)
    return (r < 0.9) & (np.hypot(u - 0.45, v - 0.1) > 0.7)


def _colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """A random RGB colour in [0, 1], at least 0.35 away in luminance from `avoid`."""
    lum = np.array([0.299, 0.587, 0.114])
    for _ in range(32):
        c = rng.random(3)
        if avoid is None or abs(c @ lum - avoid @ lum) > 0.35:
            return c
    return 1.0 - avoid


def render(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1  # pixel centers in [-1, 1]
    cy, cx = rng.uniform(-0.3, 0.3, 2)
    scale = rng.uniform(0.4, 0.65)
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = (x - cx) / scale, (y - cy) / scale
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    mask = _shape_mask(label, u, v)[..., None]
    bg = _colour(rng)
    fg = _colour(rng, avoid=bg)
    shade = rng.uniform(-0.15, 0.15, 2)
    img = bg + (shade[0] * x + shade[1] * y)[..., None]
    img = np.where(mask, fg, img)
    img = img + rng.normal(0, rng.uniform(0.02, 0.08), img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


class BuiltinSource:
    """`builtin`: n rendered images of `size` px, label = index % 10 (balanced classes)."""

    def __init__(self, split: str = "train", *, n: int | None = None, size: int = 64, seed: int = 0):
        if split not in _SPLITS:
            raise ValueError(f"builtin split must be one of {sorted(_SPLITS)}, got {split!r}")
        if size < 16:
            raise ValueError(f"builtin image size must be >= 16, got {size}")
        self.split, self.size, self.seed = split, size, seed
        self.n = n if n is not None else (5000 if split == "train" else 1000)
        if self.n < 1:
            raise ValueError(f"builtin source needs n >= 1, got {self.n}")
        self.num_classes = len(CLASSES)
        self.spec = f"builtin:{split}"
        self.index_skipped = 0

    def __len__(self) -> int:
        return self.n

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """(image (size, size, 3) uint8, label)."""
        label = i % len(CLASSES)
        return render(label, np.random.default_rng([self.seed, _SPLITS[self.split], i]), self.size), label

    def caption(self, i: int) -> str:
        """A caption derived from sample i's class (the text side of the CLIP baseline on this dataset)."""
        return CAPTION_TEMPLATES[(i // len(CLASSES)) % len(CAPTION_TEMPLATES)].format(CLASSES[i % len(CLASSES)])


CAPTION_TEMPLATES = ("a photo of a {}.", "a {} shape on a background.", "an image showing a {}.")
