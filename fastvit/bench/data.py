"""`fastvit bench data [images=N] [out=DIR] [workers=W] [batch=B] [min_side=S] [max_side=S]`.

Throughput of the whole input pipeline, decode + all crops (default: 2 x 224 + 8 x 98, the Web-DINO
recipe), on real JPEG files written to a temporary folder, for every backend available here:
  cpp        torch loader: Pillow draft-mode decode in workers + the fused C++ kernel
  dali_cpu   DALI CPU decode + the fused C++ kernel
  dali_gpu   DALI nvJPEG decode + the fused CUDA kernel (GPU only)
  pillow     baseline: full decode, then each crop augmented with Pillow one by one (the way
             torchvision-style pipelines do), in the same number of workers
Prints a table (images/s, crops/s, speed-up over pillow) and writes bench_data.json into DIR.
"""

import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from fastvit.data import augment as A
from fastvit.data.build import build_loader, dali_available
from fastvit.data.builtin import render
from fastvit.data.sampler import ResumableSampler
from fastvit.data.sources import ImageFolderSource

DEFAULTS = {"images": 256, "out": ".", "workers": 2, "batch": 32, "min_side": 480, "max_side": 1024}


def parse(argv: list[str]) -> dict:
    opts = dict(DEFAULTS)
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in DEFAULTS:
            raise ValueError(f"bench data takes key=value with keys {sorted(DEFAULTS)}, got {arg!r}")
        opts[key] = value if key == "out" else int(value)
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


class PillowPerCrop(torch.utils.data.Dataset):
    """The baseline: same crop table, each crop cut, resized and augmented by Pillow."""

    def __init__(self, source, cfg: A.MultiCropConfig):
        self.source, self.cfg = source, cfg
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)

    def __len__(self):
        return len(self.source)

    def _crop(self, img: Image.Image, row: np.ndarray) -> torch.Tensor:
        y0, x0, h, w, s = (float(row[c]) for c in (A.Y0, A.X0, A.BOX_H, A.BOX_W, A.SIZE))
        out = img.crop((x0, y0, x0 + w, y0 + h)).resize((int(s), int(s)), Image.BICUBIC)
        if row[A.FLIP]:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if row[A.JITTER]:
            for op in row[A.ORDER0 : A.ORDER0 + 4].astype(int):
                f = float(row[A.BRIGHTNESS + op])
                if op == 3:
                    hsv = np.array(out.convert("HSV"))
                    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(f * 255)) % 256
                    out = Image.fromarray(hsv, "HSV").convert("RGB")
                else:
                    out = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[op](out).enhance(f)
        if row[A.GRAY]:
            out = out.convert("L").convert("RGB")
        if row[A.SIGMA] > 0:
            out = out.filter(ImageFilter.GaussianBlur(float(row[A.SIGMA])))
        if row[A.SOLARIZE]:
            out = ImageOps.solarize(out, 128)
        x = torch.from_numpy(np.array(out)).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std

    def __getitem__(self, key):
        epoch, index = key
        img = Image.open(self.source.files[index])
        img = ImageOps.exif_transpose(img).convert("RGB")
        rows = A.draw_sample_params(self.cfg, img.height, img.width, 0, epoch, index)
        return [self._crop(img, row) for row in rows]


def pillow_loader(source, cfg, batch: int, workers: int):
    sampler = ResumableSampler(len(source), shuffle=False)
    collate = lambda items: [torch.stack(group) for group in zip(*items)]
    return torch.utils.data.DataLoader(
        PillowPerCrop(source, cfg), batch_sampler=torch.utils.data.BatchSampler(sampler, batch, drop_last=False),
        num_workers=workers, collate_fn=collate,
    )  # fmt: skip


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


def main(argv: list[str]) -> int:
    try:
        opts = parse(argv)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    cfg = A.MultiCropConfig()
    n_batches = max(1, opts["images"] // opts["batch"] - 1)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(folder, opts["images"], opts["min_side"], opts["max_side"])
        for name, make in backends(folder, cfg, opts).items():
            seconds = time_batches(make(), n_batches)
            images = n_batches * opts["batch"]
            rate = images / seconds
            results.append({"backend": name, "images_per_s": rate, "crops_per_s": rate * cfg.n_crops})
    base = next(r["images_per_s"] for r in results if r["backend"] == "pillow")
    print(f"decode + {cfg.n_global}x{cfg.global_size} + {cfg.n_local}x{cfg.local_size} crops, {opts['images']} JPEGs "
          f"{opts['min_side']}-{opts['max_side']} px, batch {opts['batch']}, {opts['workers']} workers")  # fmt: skip
    print(f"{'backend':<10} {'images/s':>10} {'crops/s':>10} {'vs pillow':>10}")
    for r in results:
        r["speedup_vs_pillow"] = r["images_per_s"] / base
        name, ips, cps, up = r["backend"], r["images_per_s"], r["crops_per_s"], r["speedup_vs_pillow"]
        print(f"{name:<10} {ips:>10.1f} {cps:>10.1f} {up:>9.2f}x")
    os.makedirs(opts["out"], exist_ok=True)
    path = os.path.join(opts["out"], "bench_data.json")
    with open(path, "w") as f:
        json.dump({"options": opts, "crops": cfg.__dict__, "results": results}, f, indent=1, default=list)
    print(f"wrote {path}")
    return 0
