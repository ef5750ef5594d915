"""`build_loader`: source spec + crop config -> an endless, resumable iterator of batch dicts."""

import importlib.util

import torch

from fastvit.data.augment import MultiCropConfig
from fastvit.data.decode import DEFAULT_MAX_PIXELS
from fastvit.data.loader import Loader, MaskConfig, MultiCropCollate, MultiCropDataset, kernel_threads
from fastvit.data.sampler import ResumableSampler
from fastvit.data.sources import source_from_spec

LOADERS = ("auto", "torch", "dali")


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
):
    """An endless iterator of batch dicts for one rank (`Loader` or `DaliLoader`).

    source: a spec string (`builtin`, `imagefolder:PATH`, `webdataset:PATTERN`) or a source object.
    batch_size: per rank. device_id: the GPU this rank uses (None on a CPU); DALI decodes there.
    Batch dict: global_crops (n_global*B, 3, Sg, Sg) and local_crops (n_local*B, 3, Sl, Sl), crop-major;
    crops (list of (B, 3, S, S) views, globals then locals); labels, indices, epochs (B,) int64;
    skipped (int; unreadable samples and images over max_pixels, replaced); with `mask`: masks (n_global*B, N)
    bool, mask_indices (M,), mask_weights (M,), n_masked.
    """
    crops = crops or MultiCropConfig()
    if isinstance(source, str):
        source = source_from_spec(source, split, seed=seed)
    sampler = ResumableSampler(len(source), rank=rank, world_size=world_size, seed=seed, shuffle=shuffle)
    if choose_loader(loader, source, device_id=device_id) == "dali":
        from fastvit.data.dali import DaliLoader

        return DaliLoader(
            source,
            crops,
            sampler,
            batch_size,
            seed=seed,
            mask=mask,
            device_id=device_id,
            num_threads=kernel_threads(1),
            out_dtype=out_dtype,
            max_pixels=max_pixels,
        )
    dataset = MultiCropDataset(source, crops, seed=seed, draft=draft, max_pixels=max_pixels)
    threads = kernel_threads(num_workers)
    collate = MultiCropCollate(crops, seed=seed, mask=mask, out_dtype=out_dtype, num_threads=threads)
    return Loader(dataset, collate, sampler, batch_size, num_workers=num_workers, pin_memory=pin_memory)
