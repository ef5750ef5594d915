"""`fastvit bench data [images=N] [out=DIR] [workers=W] [batch=B] [repeats=R] [min_side=S] [max_side=S]`.

Throughput of the whole input pipeline, decode + all crops (default: 2 x 224 + 8 x 98, the Web-DINO
recipe), on real JPEG files written to a temporary folder, for every backend available here:
  cpp        torch loader: Pillow draft-mode decode in workers + the fused C++ kernel in the collate
  dali_cpu   DALI CPU decode + the fused C++ kernel
  dali_gpu   DALI nvJPEG decode + the fused CUDA kernel (GPU only)
  pillow     baseline, torchvision-style: each worker decodes with Pillow (open + convert("RGB")),
             then runs every crop of the same crop table through PIL one by one (crop + bicubic
             resize, flip, ColorJitter as ImageEnhance + hue through HSV in its random order,
             grayscale, GaussianBlur, solarize, ToTensor + Normalize) and default_collate batches
             them. The blur is Pillow's ImageFilter.GaussianBlur, cheaper than torchvision's
             tensor convolution, so the baseline errs on the fast side.
Same images, crop counts, batch size and worker count for all. Every backend runs `repeats` times,
interleaved (so a change in the machine's load hits all of them); each run times the batches after
the first (worker start-up excluded). The table reports the best run's images/s and crops/s, the
median, and the ratio of best to the pillow baseline's best; the 1-minute load average is recorded
before and after each run (the machine may be shared). Writes bench_data.json into DIR.
"""

import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import PIL
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from fastvit.data import augment as A
from fastvit.data.build import build_loader, dali_available
from fastvit.data.builtin import render
from fastvit.data.sampler import ResumableSampler
from fastvit.data.sources import ImageFolderSource

DEFAULTS = {"images": 256, "out": ".", "workers": 2, "batch": 32, "repeats": 3, "min_side": 480, "max_side": 1024}


def parse(argv: list[str]) -> dict:
    opts = dict(DEFAULTS)
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in DEFAULTS:
            raise ValueError(f"bench data takes key=value with keys {sorted(DEFAULTS)}, got {arg!r}")
        opts[key] = value if key == "out" else int(value)
    if opts["images"] < 2 * opts["batch"] or opts["repeats"] < 1:
        raise ValueError(f"need images >= 2 * batch and repeats >= 1, got {opts}")
    return opts


def write_jpegs(folder: str, n: int, min_side: int, max_side: int, seed: int = 0) -> None:
    """n photo-like JPEGs (rendered shapes, upscaled, with sensor-like noise) of random sizes."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        long_side = int(rng.integers(min_side, max_side + 1))
        short = int(long_side * rng.uniform(0.66, 0.8))
        w, h = (long_side, short) if rng.random() < 0.7 else (short, long_side)
        base = Image.fromarray(render(i % 10, rng, 96)).resize((w, h), Image.BICUBIC)
        arr = np.asarray(base, np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def pil_hue(img: Image.Image, shift: float) -> Image.Image:
    """torchvision's adjust_hue on a PIL image: shift the H channel of HSV (uint8, wrapping)."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h += np.array(shift * 255).astype(np.int8).view(np.uint8)  # wraps modulo 256
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert("RGB")


def pil_gray3(img: Image.Image) -> Image.Image:
    """torchvision's rgb_to_grayscale(num_output_channels=3) on a PIL image."""
    np_img = np.array(img.convert("L"), dtype=np.uint8)
    return Image.fromarray(np.dstack([np_img, np_img, np_img]), "RGB")


class PillowPerCrop(torch.utils.data.Dataset):
    """The baseline: the same crop table as the kernel, each crop cut, resized and augmented by PIL."""

    _ENHANCE = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)

    def __init__(self, source, cfg: A.MultiCropConfig):
        self.source, self.cfg = source, cfg
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)

    def __len__(self):
        return len(self.source)

    def crop(self, img: Image.Image, row: np.ndarray) -> torch.Tensor:
        """One crop (3, S, S) float32, normalised."""
        y0, x0, h, w, s = (float(row[c]) for c in (A.Y0, A.X0, A.BOX_H, A.BOX_W, A.SIZE))
        out = img.crop((x0, y0, x0 + w, y0 + h)).resize((int(s), int(s)), Image.BICUBIC)
        if row[A.FLIP]:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if row[A.JITTER]:
            for op in row[A.ORDER0 : A.ORDER0 + 4].astype(int):
                f = float(row[A.BRIGHTNESS + op])
                out = pil_hue(out, f) if op == 3 else self._ENHANCE[op](out).enhance(f)
        if row[A.GRAY]:
            out = pil_gray3(out)
        if row[A.SIGMA] > 0:
            out = out.filter(ImageFilter.GaussianBlur(float(row[A.SIGMA])))
        if row[A.SOLARIZE]:
            out = ImageOps.solarize(out, 128)
        x = torch.from_numpy(np.array(out, np.uint8, copy=True)).permute(2, 0, 1).contiguous().float().div(255)
        return x.sub_(self.mean).div_(self.std)

    def __getitem__(self, key):
        epoch, index = key
        with open(self.source.files[index], "rb") as f:
            img = Image.open(f).convert("RGB")  # torchvision's pil_loader
        rows = A.draw_sample_params(self.cfg, img.height, img.width, 0, epoch, index)
        return [self.crop(img, row) for row in rows]


def pillow_loader(source, cfg, batch: int, workers: int):
    sampler = ResumableSampler(len(source), shuffle=False)
    return torch.utils.data.DataLoader(
        PillowPerCrop(source, cfg),
        batch_sampler=torch.utils.data.BatchSampler(sampler, batch, drop_last=False),
        num_workers=workers,
        collate_fn=torch.utils.data.default_collate,
    )


def time_batches(loader, n_batches: int) -> float:
    """Seconds for n_batches after one warm-up batch (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return time.perf_counter() - start


def backends(folder: str, cfg, opts: dict) -> dict:
    spec, b, w = f"imagefolder:{folder}", opts["batch"], opts["workers"]
    out = {
        "pillow": lambda: pillow_loader(ImageFolderSource(folder), cfg, b, w),
        "cpp": lambda: build_loader(spec, batch_size=b, crops=cfg, loader="torch", num_workers=w, shuffle=False),
    }
    if dali_available():
        out["dali_cpu"] = lambda: build_loader(spec, batch_size=b, crops=cfg, loader="dali", shuffle=False)
        if torch.cuda.is_available():
            out["dali_gpu"] = lambda: build_loader(
                spec, batch_size=b, crops=cfg, loader="dali", device_id=torch.cuda.current_device(), shuffle=False
            )
    return out


def run_all(folder: str, cfg, opts: dict) -> dict[str, list[dict]]:
    """{backend: [one dict per run]}, the backends interleaved round by round."""
    n_batches = opts["images"] // opts["batch"] - 1
    runs: dict[str, list[dict]] = {}
    for _ in range(opts["repeats"]):
        for name, make in backends(folder, cfg, opts).items():
            load_before = os.getloadavg()[0]
            seconds = time_batches(make(), n_batches)
            rate = n_batches * opts["batch"] / seconds
            runs.setdefault(name, []).append(
                {"images_per_s": rate, "seconds": seconds, "load_before": load_before, "load_after": os.getloadavg()[0]}
            )
    return runs


def summarise(runs: dict[str, list[dict]], n_crops: int) -> list[dict]:
    base = max(r["images_per_s"] for r in runs["pillow"])
    out = []
    for name, rs in runs.items():
        best = max(r["images_per_s"] for r in rs)
        out.append(
            {
                "backend": name,
                "images_per_s": best,
                "crops_per_s": best * n_crops,
                "median_images_per_s": statistics.median(r["images_per_s"] for r in rs),
                "speedup_vs_pillow": best / base,
                "runs": rs,
            }
        )
    return out


def main(argv: list[str]) -> int:
    try:
        opts = parse(argv)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    cfg = A.MultiCropConfig()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(folder, opts["images"], opts["min_side"], opts["max_side"])
        load_start = os.getloadavg()
        results = summarise(run_all(folder, cfg, opts), cfg.n_crops)
        load_end = os.getloadavg()
    print(
        f"decode + {cfg.n_global}x{cfg.global_size} + {cfg.n_local}x{cfg.local_size} crops, {opts['images']} JPEGs "
        f"{opts['min_side']}-{opts['max_side']} px, batch {opts['batch']}, {opts['workers']} workers, {cpus} CPUs, "
        f"best of {opts['repeats']}; load average {load_start[0]:.2f} -> {load_end[0]:.2f}"
    )
    print(f"{'backend':<10} {'images/s':>10} {'crops/s':>10} {'median':>10} {'vs pillow':>10}")
    for r in results:
        name, ips, cps, med, up = (
            r[k] for k in ("backend", "images_per_s", "crops_per_s", "median_images_per_s", "speedup_vs_pillow")
        )
        print(f"{name:<10} {ips:>10.1f} {cps:>10.1f} {med:>10.1f} {up:>9.2f}x")
    os.makedirs(opts["out"], exist_ok=True)
    path = os.path.join(opts["out"], "bench_data.json")
    meta = {
        "cpus": cpus,
        "load_avg_start": load_start,
        "load_avg_end": load_end,
        "torch": torch.__version__,
        "pillow": PIL.__version__,
    }
    with open(path, "w") as f:
        report = {"options": opts, "crops": cfg.__dict__, "machine": meta, "results": results}
        json.dump(report, f, indent=1, default=list)
    print(f"wrote {path}")
    return 0
