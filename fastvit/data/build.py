"""`build_loader`: source spec + crop config -> an endless, resumable iterator of batch dicts."""

import importlib.util
from dataclasses import dataclass

import torch

from fastvit.data.augment import MultiCropConfig
from fastvit.data.decode import DEFAULT_MAX_PIXELS
from fastvit.data.loader import Loader, MaskConfig, MultiCropCollate, MultiCropDataset, kernel_threads
from fastvit.data.sampler import ResumableSampler
from fastvit.data.shardio import DEFAULT_MAX_SAMPLE_BYTES
from fastvit.data.sources import ShardSource, source_from_spec
from fastvit.data.stream_loader import StreamLoader

LOADERS = ("auto", "torch", "dali")


@dataclass(frozen=True)
class DataOptions:
    """The data.* settings the loaders read beside the crops (defaults: fastvit.config.DataConfig's)."""

    num_workers: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES
    shuffle_buffer: int = 1000
    shard_interleave: int = 4
    dali_prefetch: int = 2

    @classmethod
    def of(cls, data_cfg) -> "DataOptions":
        return cls(**{k: getattr(data_cfg, k) for k in cls.__dataclass_fields__})


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def choose_loader(loader: str, source, *, device_id: int | None = None) -> str:
    """'torch' or 'dali'. auto: DALI (nvJPEG) when it is installed, a GPU is in use and the source
    holds files; otherwise the torch loader (the DALI CPU mode is chosen only explicitly)."""
    if loader not in LOADERS:
        raise ValueError(f"data.loader must be one of {LOADERS}, got {loader!r}")
    if loader == "dali" and not dali_available():
        raise ValueError("data.loader=dali but nvidia-dali is not installed (pip install fastvit[dali])")
    if loader != "auto":
        return loader
    files = not getattr(source, "spec", "").startswith("builtin")
    return "dali" if files and device_id is not None and dali_available() else "torch"


def build_loader(
    source,
    *,
    batch_size: int,
    crops: MultiCropConfig | None = None,
    mask: MaskConfig | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    loader: str = "auto",
    num_workers: int = 2,
    device_id: int | None = None,
    out_dtype: torch.dtype = torch.float32,
    pin_memory: bool | None = None,
    draft: bool = True,
    shuffle: bool = True,
    split: str = "train",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    data=None,
):
    """An endless iterator of batch dicts for one rank (`Loader` or `DaliLoader`).

    source: a spec string (`builtin`, `imagefolder:PATH`, `webdataset:PATTERN`) or a source object.
    batch_size: per rank. device_id: the GPU this rank uses (None on a CPU); DALI decodes there.
    Batch dict: global_crops (n_global*B, 3, Sg, Sg) and local_crops (n_local*B, 3, Sl, Sl), crop-major;
    crops (list of (B, 3, S, S) views, globals then locals); labels, indices, epochs (B,) int64;
    skipped (int; unreadable samples and images over max_pixels, replaced); with `mask`: masks (n_global*B, N)
    bool, mask_indices (M,), mask_weights (M,), n_masked, mask_counts (n_global*B,) on the host. On shards also
    skipped_shards (int).
    data: the config's DataConfig (or DataOptions); when given, its num_workers and max_pixels win.
    `webdataset:` shards are read as a stream (StreamLoader; the DALI loader takes the same stream).
    Every loader has state_dict(), load_state_dict(state, all_ranks=None) (all_ranks: a callable giving every
    written rank's state, for a resume on another layout) and the run's counts skipped_total (samples) and
    skipped_shards.
    """
    crops = crops or MultiCropConfig()
    opts = DataOptions.of(data) if data is not None else DataOptions(num_workers=num_workers, max_pixels=max_pixels)
    num_workers, max_pixels = opts.num_workers, opts.max_pixels
    if isinstance(source, str):
        source = source_from_spec(source, split, seed=seed, max_sample_bytes=opts.max_sample_bytes)
    shards = isinstance(source, ShardSource)  # a stream (fastvit.data.stream), not a sampler over an index
    layout = {"rank": rank, "world_size": world_size, "seed": seed}
    if choose_loader(loader, source, device_id=device_id) == "dali":
        from fastvit.data import dali

        common = {"mask": mask, "device_id": device_id, "num_threads": kernel_threads(1), "out_dtype": out_dtype}
        if opts.dali_prefetch < 1:
            raise ValueError(f"data.dali_prefetch must be >= 1 (1: batches made on demand), got {opts.dali_prefetch}")
        common["prefetch"] = opts.dali_prefetch
        if shards:
            return dali.DaliStreamLoader(source, crops, batch_size, options=opts, **layout, **common)
        sampler = ResumableSampler(len(source), rank=rank, world_size=world_size, seed=seed, shuffle=shuffle)
        return dali.DaliLoader(source, crops, sampler, batch_size, seed=seed, max_pixels=max_pixels, **common)
    dataset = MultiCropDataset(source, crops, seed=seed, draft=draft, max_pixels=max_pixels)
    threads = kernel_threads(num_workers)
    collate = MultiCropCollate(crops, seed=seed, mask=mask, out_dtype=out_dtype, num_threads=threads)
    if shards:
        kw = {"num_workers": num_workers, "pin_memory": pin_memory, "options": opts}
        return StreamLoader(source, dataset, collate, batch_size, **kw, **layout)
    sampler = ResumableSampler(len(source), rank=rank, world_size=world_size, seed=seed, shuffle=shuffle)
    return Loader(dataset, collate, sampler, batch_size, num_workers=num_workers, pin_memory=pin_memory)
