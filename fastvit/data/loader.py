"""The torch data loader: read -> decode (Pillow, draft mode) -> crop table, in DataLoader
workers; the collate runs the fused multi-crop kernel over the whole batch and adds iBOT masks.

A sample that cannot be read or decoded is replaced by the next index (deterministically) and
counted; a batch carries its count in `skipped`, and `Loader.skipped_total` sums them.
"""

import functools
import logging
import os
import select
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from fastvit.data import augment as A
from fastvit.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_rgb, open_image, oriented_size
from fastvit.data.masking import ibot_masks
from fastvit.data.multicrop import multicrop
from fastvit.data.sampler import ResumableSampler
from fastvit.errors import UserError

log = logging.getLogger(__name__)
MASK_STREAM = 1 << 20  # generator stream of the iBOT masks (sample streams count retries from 0)


@dataclass(frozen=True)
class MaskConfig:
    """iBOT masks on the global crops: patch grid = global_size // patch_size."""

    patch_size: int = 16
    ratio: tuple[float, float] = (0.1, 0.5)
    prob: float = 0.5


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8, decoded
    params: np.ndarray  # (n_crops, NUM_COLS) float64, boxes in decoded pixels
    label: int
    epoch: int
    index: int
    skipped: int  # unreadable samples replaced on the way to this one
    read: int  # the index of the sample decoded: (index + skipped) % len(source)
    caption: str | None = None  # a shard sample's text, read with its image (None: a source without captions)


class MultiCropDataset(torch.utils.data.Dataset):
    """dataset[(epoch, index)] -> Sample; decode and parameter draw for one sample."""

    def __init__(
        self,
        source,
        cfg: A.MultiCropConfig,
        *,
        seed: int = 0,
        draft: bool = True,
        max_retries: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.source, self.cfg, self.seed, self.draft, self.max_retries = source, cfg, seed, draft, max_retries
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        errors = []
        for t in range(self.max_retries):
            j = (index + t) % len(self.source)
            try:
                payload, label = self.source.read(j)
                image, params = self.prepare(payload, epoch, index, t)
            except (DecodeError, OSError) as e:
                errors.append(f"sample {j}: {e}")
                log.warning("skipping %s sample %d: %s", getattr(self.source, "spec", "?"), j, e)
                continue
            return Sample(image, params, label, epoch, index, t, j)
        spec = getattr(self.source, "spec", "the data source")
        raise UserError(
            f"{spec}: {self.max_retries} consecutive samples from index {index} cannot be read (last: {errors[-1]}); "
            "check the files of data.source"
        )

    def prepare(self, payload, epoch: int, index: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(decoded image, crop table rows); encoded bytes are decoded at the draft scale the crops allow."""
        if isinstance(payload, np.ndarray):
            H, W = payload.shape[:2]
            return payload, A.draw_sample_params(self.cfg, H, W, self.seed, epoch, index, stream)
        img = open_image(payload, self.max_pixels)
        H, W = oriented_size(img)
        rows = A.draw_sample_params(self.cfg, H, W, self.seed, epoch, index, stream)
        arr = decode_rgb(img, A.draft_factor(rows) if self.draft else 1)
        if arr.shape[:2] != (H, W):
            rows = A.rescale_boxes(rows, H, W, *arr.shape[:2])
        return arr, rows


def crop_table(params_per_sample: list[np.ndarray]) -> np.ndarray:
    """(n_crops * B, NUM_COLS) crop-major table (row k * B + b is crop k of sample b)."""
    rows = np.stack(params_per_sample, axis=1)  # (n_crops, B, NUM_COLS)
    rows[:, :, A.IMAGE] = np.arange(rows.shape[1])[None, :]
    return rows.reshape(-1, A.NUM_COLS)


def split_groups(flat: torch.Tensor, cfg: A.MultiCropConfig, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(global_crops (n_global*B, 3, Sg, Sg), local_crops (n_local*B, 3, Sl, Sl)) views of the flat output."""
    g, s = cfg.n_global * B, cfg.global_size
    n_g = g * 3 * s * s
    local = flat[n_g:].view(cfg.n_local * B, 3, cfg.local_size, cfg.local_size)
    return flat[:n_g].view(g, 3, s, s), local


class MultiCropCollate:
    """list[Sample] -> batch dict (see `build_loader`), multi-crop on the CPU kernel."""

    def __init__(self, cfg, *, seed=0, mask: MaskConfig | None = None, out_dtype=torch.float32, num_threads=0):
        self.cfg, self.seed, self.mask, self.out_dtype, self.num_threads = cfg, seed, mask, out_dtype, num_threads

    def __call__(self, samples: list[Sample]) -> dict:
        table = crop_table([s.params for s in samples])
        flat = multicrop(
            [s.image for s in samples],
            table,
            mean=self.cfg.mean,
            std=self.cfg.std,
            blur_radius=self.cfg.blur_radius,
            out_dtype=self.out_dtype,
            backend="cpp",
            num_threads=self.num_threads,
        )
        return finish_batch(flat, samples, self.cfg, self.seed, self.mask)


def finish_batch(flat: torch.Tensor, samples: list[Sample], cfg, seed: int, mask: MaskConfig | None) -> dict:
    """The batch dict around the flat multi-crop output (shared by the torch and DALI loaders)."""
    B = len(samples)
    global_crops, local_crops = split_groups(flat, cfg, B)
    batch = {
        "global_crops": global_crops,
        "local_crops": local_crops,
        "labels": torch.tensor([s.label for s in samples], dtype=torch.int64),
        "indices": torch.tensor([s.index for s in samples], dtype=torch.int64),
        "read_indices": torch.tensor([s.read for s in samples], dtype=torch.int64),
        "epochs": torch.tensor([s.epoch for s in samples], dtype=torch.int64),
        "skipped": sum(s.skipped for s in samples),
    }
    if samples[0].caption is not None:  # shard streams: the captions travel with their images
        batch["captions"] = [s.caption for s in samples]
    if mask is not None:
        grid = (cfg.global_size // mask.patch_size,) * 2
        rng = A.sample_rng(seed, samples[0].epoch, samples[0].index, MASK_STREAM)
        batch.update(ibot_masks(rng, cfg.n_global * B, grid, ratio=mask.ratio, prob=mask.prob))
    return batch


class Loader:
    """Endless iterator of batch dicts over a ResumableSampler; resumable between steps."""

    def __init__(self, dataset, collate, sampler: ResumableSampler, batch_size: int, *, num_workers=2, pin_memory=None):
        if batch_size < 1 or batch_size > sampler.per_rank:
            raise ValueError(f"batch_size must be in [1, {sampler.per_rank}] (samples per rank), got {batch_size}")
        self.dataset, self.collate, self.sampler, self.batch_size = dataset, collate, sampler, batch_size
        self.num_workers = capped_workers(num_workers, report=sampler.rank == 0)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.skipped_total = self.skipped_shards = 0  # no shards here: skipped_shards stays 0
        self.batches_per_epoch = sampler.per_rank // batch_size

    def __iter__(self):
        batches = torch.utils.data.BatchSampler(self.sampler, self.batch_size, drop_last=False)
        # Workers are started with forkserver, not fork: the collate runs the OpenMP kernel, and GNU OpenMP
        # hangs in a child forked from a parent whose OpenMP pool is already running (torch's, at the first op).
        dl = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            pin_memory=self.pin_memory,
            prefetch_factor=2 if self.num_workers else None,
            multiprocessing_context="forkserver" if self.num_workers else None,
            generator=torch.Generator(),  # workers' base seed must not consume the training RNG (exact resume)
            worker_init_fn=functools.partial(exit_with_process, os.getpid()) if self.num_workers else None,
        )
        for batch in dl:
            self.sampler.advance(self.batch_size)
            self.skipped_total += batch["skipped"]
            yield batch

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict, all_ranks=None) -> None:
        """all_ranks: unused; an image folder's position resumes on the data-parallel size it was written with."""
        load_sampler_state(self.sampler, state)
        self.skipped_total = int(state["skipped_total"])


def load_sampler_state(sampler: ResumableSampler, state: dict) -> None:
    if "sampler" not in state:
        raise ValueError("the checkpoint's data position is a shard stream's; resume with its data.source")
    if state["sampler"]["world_size"] != sampler.world_size:
        raise ValueError(
            f"it was written by {state['sampler']['world_size']} data-parallel rank(s); the position in an image "
            f"folder or the builtin set resumes on that many (this run has {sampler.world_size}; on webdataset "
            "shards it can change)"
        )
    sampler.load_state_dict(state["sampler"])


def exit_with_process(pid: int, worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: the worker exits when process `pid` (the trainer) is gone, however it died.

    A forkserver's workers are the forkserver's children, so torch's own check (has the parent changed?) never
    fires after a SIGKILL of the trainer. A pidfd becomes readable when the process exits (Linux >= 5.3); without
    one the thread polls the pid once a second."""
    _die_with_parent()  # the forkserver: it exits when the trainer does
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
        if not _alive(pid):
            os._exit(1)
    threading.Thread(target=_exit_after, args=(pid, fd), name="fastvit-trainer-watch", daemon=True).start()


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills this process when its parent thread ends (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG = 1, SIGKILL = 9
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent ended before the request took hold
        os._exit(1)


# Memory a worker needs (its imports, a decoded image, prefetched batches) before another one is worth starting.
WORKER_MEMORY = 1 << 30


def capped_workers(num_workers: int, report: bool = True) -> int:
    """data.num_workers, capped at this rank's share (torchrun's LOCAL_WORLD_SIZE ranks per node) of the CPUs the
    process may use and of the available memory, with one line on stderr when capped (if `report`): more workers
    than cores decode no faster, and each one costs memory."""
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit, why = max(1, cpus // ranks), f"{cpus} CPU cores for {ranks} rank(s)"
    available = _available_memory()
    if available is not None and available // (WORKER_MEMORY * ranks) < limit:
        limit = max(1, available // (WORKER_MEMORY * ranks))
        why = f"{available / 2**30:.1f} GiB of available memory for {ranks} rank(s), 1 GiB per worker"
    if num_workers <= limit:
        return num_workers
    if report:
        print(f"fastvit: data.num_workers={num_workers} capped to {limit} ({why})", file=sys.stderr, flush=True)
    return limit


def _available_memory():
    """MemAvailable of /proc/meminfo in bytes, or None where it is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exit_after(pid: int, fd) -> None:
    if fd is not None:
        select.select([fd], [], [])
    else:
        while _alive(pid):
            time.sleep(1.0)
    os._exit(1)


def kernel_threads(num_workers: int) -> int:
    """OpenMP threads per worker so that workers x threads ~ the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, num_workers))
