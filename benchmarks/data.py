"""`fastvit bench data [data.source=SPEC] [images=N] [out=DIR] [workers=W] [batch=B] [repeats=R] [min_side=S]
[max_side=S] [shards=N per_shard=M]`.

On `webdataset:` shards it first times the stream itself (`stream` line): start-up seconds (building the loader
to its first batch), the most files open in the trainer and its workers together, each worker's resident
memory, and images/s; then the backends on `images` samples read into memory. `shards=N per_shard=M` writes N
shards of M small JPEGs into a temporary folder and reports only the stream line (the scale benchmark:
start-up and memory per worker must not grow with M).

Throughput of the whole input pipeline, decode + all crops (default: 2 x 224 + 8 x 98, the Web-DINO
recipe), for every backend available here, on `data.source` (any source spec: `imagefolder:PATH`,
`webdataset:PATTERN`, `builtin`; `images` of its samples, drawn with a fixed seed) or, by default, on
real JPEG files written to a temporary folder (min_side..max_side px):
  cpp          torch loader: Pillow draft-mode decode in workers + the fused C++ kernel in the collate
  dali_cpu     DALI CPU decode + the fused C++ kernel
  dali_gpu     DALI nvJPEG decode + the fused CUDA kernel (GPU only)
  torchvision  the baseline when torchvision is importable: DINOv2's augmentation written with
               torchvision.transforms (RandomResizedCrop bicubic, flip, ColorJitter p=0.8, grayscale,
               GaussianBlur kernel 9 with the recipe's per-crop probabilities, solarize on the second
               global crop, ToTensor + Normalize) on images opened as torchvision's pil_loader does,
               in DataLoader workers with default_collate
  pillow       the baseline otherwise, labelled as such (a re-implementation of torchvision, not
               torchvision): each worker decodes with Pillow (open + convert("RGB")), then runs every
               crop of the same crop table through PIL one by one (crop + bicubic resize, flip,
               ColorJitter as ImageEnhance + hue through HSV in its random order, grayscale,
               GaussianBlur, solarize, ToTensor + Normalize). Pillow's ImageFilter.GaussianBlur is
               cheaper than torchvision's tensor convolution, so this baseline errs on the fast side.
A `decode` row times decoding alone (fastvit.data.decode at full size, one process).
Same images, crop counts, batch size and worker count for all. Every backend runs `repeats` times,
interleaved (so a change in the machine's load hits all of them); each run times the batches after
the first (worker start-up excluded). The table reports the best run's images/s and crops/s, the
median, and the ratio of best to the baseline's best; the 1-minute load average is recorded before
and after each run (the machine may be shared). Writes bench_data.json into DIR.
"""

import importlib.util
import io
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
from fastvit.data.build import DataOptions, build_loader, dali_available
from fastvit.data.builtin import render
from fastvit.data.decode import DecodeError, decode_bytes
from fastvit.data.sampler import ResumableSampler
from fastvit.data.sources import source_from_spec

DEFAULTS = {
    "images": 256,
    "out": ".",
    "workers": 2,
    "batch": 32,
    "repeats": 3,
    "min_side": 480,
    "max_side": 1024,
    "data.source": "",
    "shards": 0,
    "per_shard": 100,
}
_STRINGS = ("out", "data.source")


def parse(argv: list[str]) -> dict:
    opts = dict(DEFAULTS)
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in DEFAULTS:
            raise ValueError(f"bench data takes key=value with keys {sorted(DEFAULTS)}, got {arg!r}")
        opts[key] = value if key in _STRINGS else int(value)
    if not opts["shards"] and (opts["images"] < 2 * opts["batch"] or opts["repeats"] < 1):
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


class SampleSubset:
    """`n` samples of a source (seeded draw, kept in index order), with the source's read / spec."""

    def __init__(self, source, n: int, seed: int = 0):
        self.source, self.spec = source, source.spec
        self.num_classes = getattr(source, "num_classes", None)
        self.index_skipped = getattr(source, "index_skipped", 0)
        pick = np.random.default_rng(seed).choice(len(source), size=n, replace=False) if n < len(source) else None
        self.indices = np.sort(pick) if pick is not None else np.arange(len(source))

    def __len__(self):
        return len(self.indices)

    def read(self, i):
        return self.source.read(int(self.indices[i]))


def open_pil(payload) -> Image.Image:
    """A sample's payload as torchvision's pil_loader opens a file: Image.open + convert("RGB")."""
    if isinstance(payload, np.ndarray):  # builtin: already decoded
        return Image.fromarray(payload)
    return Image.open(io.BytesIO(payload)).convert("RGB")


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
        img = open_pil(self.source.read(index)[0])
        rows = A.draw_sample_params(self.cfg, img.height, img.width, 0, epoch, index)
        return [self.crop(img, row) for row in rows]


class TorchvisionDINOv2(torch.utils.data.Dataset):
    """DINOv2's DataAugmentationDINO (dinov2/data/augmentations.py) in torchvision.transforms, with the crop
    config's sizes, scales and probabilities."""

    def __init__(self, source, cfg: A.MultiCropConfig):
        from torchvision import transforms as T

        self.source, self.cfg = source, cfg
        bicubic = T.InterpolationMode.BICUBIC

        def blur(p):
            return T.RandomApply([T.GaussianBlur(2 * cfg.blur_radius + 1, sigma=cfg.blur_sigma)], p=p)

        def pipeline(size, scale, blur_p, solarize_p):
            ops = [
                T.RandomResizedCrop(size, scale=scale, ratio=cfg.ratio, interpolation=bicubic),
                T.RandomHorizontalFlip(p=cfg.flip_p),
                T.RandomApply([T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
                T.RandomGrayscale(p=cfg.gray_p),
                blur(blur_p),
            ]
            if solarize_p > 0:
                ops.append(T.RandomSolarize(threshold=128, p=solarize_p))
            return T.Compose([*ops, T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])

        pick = lambda ps, k: ps[min(k, len(ps) - 1)]
        self.globals = [
            pipeline(cfg.global_size, cfg.global_scale, pick(cfg.blur_p_global, k), pick(cfg.solarize_p_global, k))
            for k in range(cfg.n_global)
        ]
        self.local = pipeline(cfg.local_size, cfg.local_scale, cfg.blur_p_local, cfg.solarize_p_local)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, key):
        _, index = key
        img = open_pil(self.source.read(index)[0])
        return [t(img) for t in self.globals] + [self.local(img) for _ in range(self.cfg.n_local)]


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def baseline_name() -> str:
    return "torchvision" if torchvision_available() else "pillow"


def baseline_loader(source, cfg, batch: int, workers: int):
    """torchvision's DINOv2 augmentation when torchvision is importable, else the Pillow re-implementation."""
    dataset = TorchvisionDINOv2(source, cfg) if torchvision_available() else PillowPerCrop(source, cfg)
    sampler = ResumableSampler(len(source), shuffle=False)
    return torch.utils.data.DataLoader(
        dataset,
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


def backends(source, cfg, opts: dict) -> dict:
    b, w = opts["batch"], opts["workers"]
    out = {
        baseline_name(): lambda: baseline_loader(source, cfg, b, w),
        "cpp": lambda: build_loader(source, batch_size=b, crops=cfg, loader="torch", num_workers=w, shuffle=False),
    }
    if dali_available() and not source.spec.startswith("builtin"):  # DALI decodes encoded files only
        out["dali_cpu"] = lambda: build_loader(source, batch_size=b, crops=cfg, loader="dali", shuffle=False)
        if torch.cuda.is_available():
            out["dali_gpu"] = lambda: build_loader(
                source, batch_size=b, crops=cfg, loader="dali", device_id=torch.cuda.current_device(), shuffle=False
            )
    return out


def decode_rate(source, n: int) -> dict:
    """images/s of decoding alone (full size, one process) over the first n samples; builtin renders instead."""
    start, done = time.perf_counter(), 0
    for i in range(min(n, len(source))):
        payload = source.read(i)[0]
        try:
            decode_bytes(payload) if isinstance(payload, bytes | bytearray) else payload
            done += 1
        except (DecodeError, OSError):
            continue
    seconds = time.perf_counter() - start
    return {"images_per_s": done / seconds if seconds > 0 else float("nan"), "seconds": seconds, "images": done}


def run_all(source, cfg, opts: dict) -> dict[str, list[dict]]:
    """{backend: [one dict per run]}, the backends interleaved round by round."""
    n_batches = len(source) // opts["batch"] - 1
    runs: dict[str, list[dict]] = {}
    for _ in range(opts["repeats"]):
        for name, make in backends(source, cfg, opts).items():
            load_before = os.getloadavg()[0]
            seconds = time_batches(make(), n_batches)
            rate = n_batches * opts["batch"] / seconds
            runs.setdefault(name, []).append(
                {"images_per_s": rate, "seconds": seconds, "load_before": load_before, "load_after": os.getloadavg()[0]}
            )
    return runs


def summarise(runs: dict[str, list[dict]], n_crops: int) -> list[dict]:
    base = max(r["images_per_s"] for r in runs[baseline_name()])
    out = []
    for name, rs in runs.items():
        best = max(r["images_per_s"] for r in rs)
        out.append(
            {
                "backend": name,
                "images_per_s": best,
                "crops_per_s": best * n_crops,
                "median_images_per_s": statistics.median(r["images_per_s"] for r in rs),
                "speedup_vs_baseline": best / base,
                "runs": rs,
            }
        )
    return out


def bench_source(opts: dict, folder: str):
    """(the source to time, a description): `images` samples of data.source, or JPEGs written into folder."""
    spec = opts["data.source"]
    if not spec:
        write_jpegs(folder, opts["images"], opts["min_side"], opts["max_side"])
        what = f"{opts['images']} JPEGs {opts['min_side']}-{opts['max_side']} px (written here)"
        return source_from_spec(f"imagefolder:{folder}"), what
    full = source_from_spec(spec, "train")
    if spec.startswith("webdataset:"):  # the first `images` samples of the seeded shard order, in memory
        source = full.take(opts["images"])
    else:
        source = SampleSubset(full, opts["images"])
    if len(source) < 2 * opts["batch"]:
        raise ValueError(f"data.source={spec!r} has {len(source)} samples; the benchmark needs 2 * batch")
    return source, f"{len(source)} samples of {spec}"


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}/task") else []:
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
    return out


def _open_files_and_rss() -> tuple[int, int, list[float]]:
    """(descriptors open in this process and its descendants, how many of them are .tar shards, resident MiB of
    each descendant)."""
    files, shards, rss = 0, 0, []
    for p in _tree(os.getpid()):
        try:
            fds = os.listdir(f"/proc/{p}/fd")
            files += len(fds)
            shards += sum(_is_tar(f"/proc/{p}/fd/{fd}") for fd in fds)
            if p != os.getpid():
                with open(f"/proc/{p}/status") as f:
                    kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
                rss.append(kb / 1024)
        except (OSError, StopIteration):
            pass
    return files, shards, rss


def _is_tar(fd_path: str) -> bool:
    try:
        return os.readlink(fd_path).endswith(".tar")
    except OSError:
        return False


def stream_report(spec: str, cfg, opts: dict, n_batches: int = 20) -> dict:
    """The shard stream on its own: start-up to the first batch, open files, worker memory, images/s."""
    options = DataOptions(num_workers=opts["workers"])
    start = time.perf_counter()
    it = iter(build_loader(spec, batch_size=opts["batch"], crops=cfg, loader="torch", data=options))
    next(it)
    startup = time.perf_counter() - start
    files, shards, rss = _open_files_and_rss()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
        now, shards_now, rss_now = _open_files_and_rss()
        files, shards, rss = max(files, now), max(shards, shards_now), rss_now or rss
    rate = n_batches * opts["batch"] / (time.perf_counter() - t0)
    del it
    return {
        "startup_s": startup,
        "open_files_max": files,
        "open_shards_max": shards,
        "process_rss_mib": rss,
        "images_per_s": rate,
    }


def write_tiny_shards(folder: str, shards: int, per_shard: int) -> str:
    """shards x per_shard samples of one small JPEG each (the same bytes: the scale, not the images, is timed)."""
    import tarfile

    buf = io.BytesIO()
    Image.fromarray(render(3, np.random.default_rng(0), 64)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    for s in range(shards):
        with tarfile.open(os.path.join(folder, f"shard-{s:06d}.tar"), "w") as tar:
            for k in range(per_shard):
                info = tarfile.TarInfo(f"{k:06d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return f"webdataset:{folder}/shard-{{000000..{shards - 1:06d}}}.tar"


def _stream_line(what: str, r: dict) -> str:
    rss = ", ".join(f"{m:.0f}" for m in r["process_rss_mib"]) or "-"
    return (
        f"stream       {what}: start-up {r['startup_s']:.2f} s to the first batch, at most {r['open_files_max']} "
        f"descriptors open (trainer + child processes), {r['open_shards_max']} of them shards; RSS of the child "
        f"processes (forkserver, workers) {rss} MiB; {r['images_per_s']:.1f} images/s"
    )


def scale_main(opts: dict, cfg) -> int:
    """`shards=N per_shard=M`: write them, report the stream line, write bench_data_scale.json."""
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        spec = write_tiny_shards(folder, opts["shards"], opts["per_shard"])
        written = time.perf_counter() - t0
        report = stream_report(spec, cfg, opts)
    what = f"{opts['shards']} shards x {opts['per_shard']} samples (written in {written:.0f} s)"
    print(_stream_line(what, report))
    os.makedirs(opts["out"], exist_ok=True)
    path = os.path.join(opts["out"], "bench_data_scale.json")
    with open(path, "w") as f:
        json.dump({"options": opts, "stream": report}, f, indent=1)
    print(f"wrote {path}")
    return 0


def main(argv: list[str]) -> int:
    try:
        opts = parse(argv)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    cfg = A.MultiCropConfig()
    if opts["shards"]:
        return scale_main(opts, cfg)
    stream = None
    if opts["data.source"].startswith("webdataset:"):
        stream = stream_report(opts["data.source"], cfg, opts)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    base = baseline_name()
    with tempfile.TemporaryDirectory() as folder:
        source, what = bench_source(opts, folder)
        load_start = os.getloadavg()
        decode = decode_rate(source, min(len(source), 64))
        results = summarise(run_all(source, cfg, opts), cfg.n_crops)
        load_end = os.getloadavg()
    label = "torchvision DINOv2 augmentation" if base == "torchvision" else "Pillow re-implementation of torchvision"
    print(
        f"decode + {cfg.n_global}x{cfg.global_size} + {cfg.n_local}x{cfg.local_size} crops, {what}, "
        f"batch {opts['batch']}, {opts['workers']} workers, {cpus} CPUs, best of {opts['repeats']}; "
        f"baseline: {base} ({label}); load average {load_start[0]:.2f} -> {load_end[0]:.2f}"
    )
    if stream is not None:
        print(_stream_line(opts["data.source"], stream))
    print(f"{'backend':<12} {'images/s':>10} {'crops/s':>10} {'median':>10} {'vs ' + base:>15}")
    print(f"{'decode':<12} {decode['images_per_s']:>10.1f} {'-':>10} {'-':>10} {'-':>15}")
    for r in results:
        name, ips, cps, med, up = (
            r[k] for k in ("backend", "images_per_s", "crops_per_s", "median_images_per_s", "speedup_vs_baseline")
        )
        print(f"{name:<12} {ips:>10.1f} {cps:>10.1f} {med:>10.1f} {up:>14.2f}x")
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
        report = {
            "options": opts,
            "source": what,
            "baseline": base,
            "crops": cfg.__dict__,
            "machine": meta,
            "decode": decode,
            "results": results,
            "stream": stream,
        }
        json.dump(report, f, indent=1, default=list)
    print(f"wrote {path}")
    return 0
