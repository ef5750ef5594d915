"""The built-in dataset: procedurally rendered shapes, no files, deterministic from a seed.

Ten classes of filled shapes and patterned shapes (disk, square, triangle, ring, cross, star,
striped disk, checkered disk, two dots, crescent) at a random position, scale and rotation, in
random colours, the shape lighter than its background, over a noisy, shaded background. Colour carries no
class information, so a model has to learn shape to separate them. Sample i of a split is rendered from
a generator seeded by (seed, split, i); `train` and `val` are disjoint streams.
"""

import colorsys
from typing import NamedTuple

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


_LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601 luminance weights
_MIN_CONTRAST = 0.6


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(background, foreground): random RGB colours in [0, 1], the foreground lighter than the background by
    more than _MIN_CONTRAST in luminance. The first of 256 uniform pairs (each put in light-over-dark order) that
    clears it; if none does (p < 1e-3), the pair of largest contrast. A fixed polarity and a wide contrast are
    what let a small ViT learn the shapes in a few hundred steps: with either polarity and a luminance gap of
    0.35, a supervised 192-wide ViT reached 13% top-1 after 100 steps of 64 images, with this rule 33%."""
    pairs = rng.random((256, 2, 3))
    lum = pairs @ _LUMA
    pairs = np.where((lum[:, 0] > lum[:, 1])[:, None, None], pairs[:, ::-1], pairs)  # (darker, lighter)
    gap = np.abs(lum[:, 1] - lum[:, 0])
    clears = gap > _MIN_CONTRAST
    i = int(np.argmax(clears if clears.any() else gap))
    return pairs[i, 0], pairs[i, 1]


class Scene(NamedTuple):
    """What one image shows: the class, its placement, its colours and the background's shading and noise."""

    label: int
    cx: float
    cy: float
    scale: float
    theta: float
    bg: np.ndarray
    fg: np.ndarray
    shade: np.ndarray
    noise: float


def draw_scene(label: int, rng: np.random.Generator) -> Scene:
    """The random parameters of one image of class `label`, drawn from `rng` in a fixed order."""
    cy, cx = rng.uniform(-0.3, 0.3, 2)
    scale = rng.uniform(0.4, 0.65)
    theta = rng.uniform(0, 2 * np.pi)
    bg, fg = _colours(rng)
    shade = rng.uniform(-0.15, 0.15, 2)
    return Scene(label, cx, cy, scale, theta, bg, fg, shade, rng.uniform(0.02, 0.08))


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of the pixel centres of a (size, size) image, in [-1, 1]."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    return y, x


def scene_mask(sc: Scene, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Boolean mask of the shape of scene `sc` at the image coordinates (y, x)."""
    dx, dy = (x - sc.cx) / sc.scale, (y - sc.cy) / sc.scale
    u = np.cos(sc.theta) * dx + np.sin(sc.theta) * dy
    v = -np.sin(sc.theta) * dx + np.cos(sc.theta) * dy
    return _shape_mask(sc.label, u, v)


def render(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`."""
    sc = draw_scene(label, rng)
    y, x = pixel_grid(size)
    img = sc.bg + (sc.shade[0] * x + sc.shade[1] * y)[..., None]
    img = np.where(scene_mask(sc, y, x)[..., None], sc.fg, img)
    img = img + rng.normal(0, sc.noise, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def colour_name(rgb: np.ndarray) -> str:
    """The everyday name of an RGB colour in [0, 1]: black, gray, white, or one of eight hues."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    if v < 0.25:
        return "black"
    if s < 0.25:
        return "white" if v > 0.75 else "gray"
    for top, name in _HUES:
        if h * 360 < top:
            return name
    return "red"


_HUES = (  # (upper bound of the hue in degrees, name); hues from 335 wrap round to red
    (15, "red"),
    (45, "orange"),
    (70, "yellow"),
    (160, "green"),
    (200, "cyan"),
    (260, "blue"),
    (290, "purple"),
    (335, "pink"),
)
COLOURS = ("black", "gray", "white", *(name for _, name in _HUES))  # every name colour_name gives


def describe(sc: Scene, template: int) -> str:
    """A caption of scene `sc`, as alt text would say it: the shape and its and the background's colours."""
    fg, bg, shape = colour_name(sc.fg), colour_name(sc.bg), CLASSES[sc.label]
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(shape=shape, fg=fg, bg=bg)


# Training captions of the CLIP baseline: every one names the shape, two of three the shape's colour, one the
# background's. Colour names make a batch separable before the image tower tells shapes apart (captions of the
# class alone collapsed to the uniform solution); a caption of the shape alone keeps colour from solving it
# entirely: with both colours in all three templates, demo_clip's 200 steps ended at InfoNCE 2.42 with zero-shot
# 11.9% and kNN 15.3% (18.0% at init), with these at 2.54 with zero-shot 45.7% and kNN 45.9%. Longest: 29 bytes.
CAPTION_TEMPLATES = (
    "a photo of a {fg} {shape}.",
    "a {fg} {shape} on {bg}.",
    "an image showing a {shape}.",
)


def class_prompts(shape: str) -> list[str]:
    """Zero-shot prompts of one class: every caption template with every pair of colour names (a prompt
    ensemble in the caption's own words, as CLIP's per-dataset templates are)."""
    return [t.format(shape=shape, fg=fg, bg=bg) for t in CAPTION_TEMPLATES for fg in COLOURS for bg in COLOURS]


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
        return render(label, self._rng(i), self.size), label

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _SPLITS[self.split], i])

    def scene(self, i: int) -> Scene:
        """What sample i shows (the parameters its image is rendered from)."""
        return draw_scene(i % len(CLASSES), self._rng(i))

    def caption(self, i: int) -> str:
        """Sample i's caption (the text side of the CLIP baseline): its class and its colours, in one of the
        CAPTION_TEMPLATES (see there why not every caption names both)."""
        return describe(self.scene(i), i // len(CLASSES))
