"""The DALI loader: DALI decodes, the fused multi-crop kernel crops, with the torch loader's
sampler (image folders) or shard stream (webdataset; `DaliStreamLoader`), crop table and batch dict.

Division of work (a deliberate choice): the host reads encoded bytes in sampler order and feeds
them to a DALI pipeline (`fn.external_source` -> `fn.decoders.image`, `device="cpu"` when
device_id is None, `device="mixed"` (nvJPEG) on a GPU). The crop table is then drawn from each
decoded size exactly as in the torch loader (no draft scaling: DALI decodes at full size), and the
C++ kernel (CPU) or the CUDA kernel (GPU) makes every crop of the batch in one call. Keeping the
crops in our kernel keeps the two loaders' semantics identical and the batch reproducible.

Whole batches (read, decode, crops, masks) are made `prefetch` - 1 ahead on a background thread
(fastvit.data.prefetch), so loading overlaps the training step; the DALI pipeline itself runs one batch at a
time on that thread. The position a checkpoint saves moves when the trainer takes a batch, not when it is made.
"""

import logging

import numpy as np
import torch

from fastvit.data import augment as A
from fastvit.data.decode import DEFAULT_MAX_PIXELS, DecodeError, check_pixel_budget
from fastvit.data.loader import MaskConfig, Sample, crop_table, finish_batch, load_sampler_state
from fastvit.data.multicrop import multicrop
from fastvit.data.prefetch import prefetched
from fastvit.data.sampler import ResumableSampler
from fastvit.data.stream import copy_state
from fastvit.data.stream_loader import StreamBatches, StreamLoader, stream_sample
from fastvit.errors import UserError

log = logging.getLogger(__name__)


def _build_pipeline(batch_size: int, num_threads: int, device_id: int | None):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1)
    def decode_pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(encoded, device="cpu" if device_id is None else "mixed", output_type=types.RGB)

    pipe = decode_pipeline()
    pipe.build()
    return pipe


def pinned(batch: dict, device_id: int | None) -> dict:
    """On a GPU, the batch's host tensors (masks, their indices and weights, labels ...) in pinned memory, pinned on
    the prefetch thread, so that the step's non-blocking copies to the device do not block; on a CPU the batch."""
    if device_id is None:
        return batch
    return {k: v.pin_memory() if torch.is_tensor(v) and v.device.type == "cpu" else v for k, v in batch.items()}


def decode(pipe, device_id: int | None, encoded: list[np.ndarray]) -> list:
    """Decoded (H, W, 3) uint8 images (numpy on CPU, CUDA tensors on a GPU); RuntimeError when one is bad."""
    pipe.feed_input("encoded", encoded)
    (out,) = pipe.run()
    if device_id is None:
        return [np.asarray(out.at(i)) for i in range(len(encoded))]
    from nvidia.dali.plugin.pytorch import feed_ndarray

    stream = torch.cuda.current_stream(device_id)
    images = []
    for i in range(len(encoded)):
        t = torch.empty(tuple(out[i].shape()), dtype=torch.uint8, device=f"cuda:{device_id}")
        images.append(feed_ndarray(out[i], t, cuda_stream=stream))
    return images


class DaliLoader:
    """Endless iterator of batch dicts (same keys as `Loader`); resumable between steps."""

    def __init__(
        self,
        source,
        cfg: A.MultiCropConfig,
        sampler: ResumableSampler,
        batch_size: int,
        *,
        seed: int = 0,
        mask: MaskConfig | None = None,
        device_id: int | None = None,
        num_threads: int = 2,
        out_dtype: torch.dtype = torch.float32,
        max_retries: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        prefetch: int = 2,
    ):
        if batch_size < 1 or batch_size > sampler.per_rank:
            raise ValueError(f"batch_size must be in [1, {sampler.per_rank}] (samples per rank), got {batch_size}")
        if getattr(source, "spec", "").startswith("builtin"):
            raise ValueError("the DALI loader decodes files; the builtin source has none (use loader=torch)")
        self.source, self.cfg, self.sampler, self.batch_size = source, cfg, sampler, batch_size
        self.seed, self.mask, self.device_id, self.out_dtype = seed, mask, device_id, out_dtype
        self.max_retries, self.max_pixels, self.prefetch = max_retries, max_pixels, prefetch
        self.pipe = _build_pipeline(batch_size, num_threads, device_id)
        self.skipped_total = self.skipped_shards = 0  # no shards here: skipped_shards stays 0
        self.batches_per_epoch = sampler.per_rank // batch_size

    def _decode(self, encoded: list[np.ndarray]) -> list:
        return decode(self.pipe, self.device_id, encoded)

    def _read_ok(self, j: int):
        """(encoded bytes, label) of sample j, or None when unreadable or undecodable."""
        try:
            data, label = self.source.read(j)
            check_pixel_budget(data, self.max_pixels)  # before DALI decodes it in full
            encoded = np.frombuffer(data, np.uint8)
            self._decode([encoded])
            return encoded, label
        except (OSError, RuntimeError, DecodeError) as e:
            log.warning("skipping %s sample %d: %s", self.source.spec, j, str(e).splitlines()[0])
            return None

    def _gather(self, keys: list[tuple[int, int]]) -> tuple[list, list[Sample]]:
        encoded, samples = [], []
        try:
            for epoch, index in keys:
                data, label = self.source.read(index)
                check_pixel_budget(data, self.max_pixels)
                encoded.append(np.frombuffer(data, np.uint8))
                samples.append(Sample(None, None, label, epoch, index, 0, index))
            return self._decode(encoded), samples
        except (OSError, RuntimeError, DecodeError):  # some sample is bad: find and replace it, one at a time
            encoded, samples = [None] * len(keys), [None] * len(keys)
        for b, (epoch, index) in enumerate(keys):
            for t in range(self.max_retries):
                j = (index + t) % len(self.source)
                got = self._read_ok(j)
                if got is not None:
                    encoded[b], samples[b] = got[0], Sample(None, None, got[1], epoch, index, t, j)
                    break
            else:
                raise UserError(
                    f"{self.source.spec}: {self.max_retries} consecutive samples from index {index} cannot be read; "
                    "check the files of data.source"
                )
        return self._decode(encoded), samples

    def __iter__(self):
        """Batches made ahead by _make (from the sampler's consumed position); the sampler advances and the
        skipped count grows as the trainer takes them."""
        for batch in prefetched(self._make, self.prefetch, device_id=self.device_id):
            self.sampler.advance(self.batch_size)
            self.skipped_total += batch["skipped"]
            yield batch

    def _make(self):
        batches = torch.utils.data.BatchSampler(self.sampler, self.batch_size, drop_last=False)
        for keys in batches:
            images, samples = self._gather(keys)
            for s, im in zip(samples, images):
                H, W = im.shape[:2]
                s.params = A.draw_sample_params(self.cfg, H, W, self.seed, s.epoch, s.index, s.skipped)
            flat = multicrop(
                images,
                crop_table([s.params for s in samples]),
                mean=self.cfg.mean,
                std=self.cfg.std,
                blur_radius=self.cfg.blur_radius,
                out_dtype=self.out_dtype,
            )
            yield pinned(finish_batch(flat, samples, self.cfg, self.seed, self.mask), self.device_id)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict, all_ranks=None) -> None:
        """all_ranks: unused; an image folder's position resumes on the data-parallel size it was written with."""
        load_sampler_state(self.sampler, state)
        self.skipped_total = int(state["skipped_total"])


class DaliStreamLoader(StreamLoader):
    """The DALI loader over the shard stream: one slot per rank, read in the training process (the shard bytes
    of the same stream the torch loader reads), DALI decodes, our kernel crops; state as StreamLoader's."""

    def __init__(
        self,
        source,
        cfg,
        batch_size,
        *,
        mask=None,
        device_id=None,
        num_threads=2,
        out_dtype=torch.float32,
        prefetch=2,
        **kw,
    ):
        super().__init__(source, None, None, batch_size, num_workers=0, **kw)
        self.cfg, self.mask, self.device_id, self.out_dtype = cfg, mask, device_id, out_dtype
        self.pipe, self.max_pixels = _build_pipeline(batch_size, num_threads, device_id), kw["options"].max_pixels
        self.prefetch = prefetch

    def __iter__(self):
        """Batches made ahead by _make (from the consumed stream state); the slot's state and the skipped counts
        move as the trainer takes them."""
        for batch, state in prefetched(self._make, self.prefetch, device_id=self.device_id):
            self.slots[0] = state
            self.skipped_total += batch["skipped"]
            self.skipped_shards += batch["skipped_shards"]
            yield batch

    def _make(self):
        """(batch, the stream state after it) from the slot's consumed state on."""
        batches = StreamBatches(self, self.next_worker)
        stream, samples, encoded = batches.stream(0), [], []
        reported = (0, 0)
        for item, state in stream.samples(self.slots[0]):
            encoded.append(np.frombuffer(item["image"], np.uint8))
            samples.append(stream_sample(item))
            if len(samples) < self.batch_size:
                continue
            try:
                for e in encoded:
                    check_pixel_budget(e, self.max_pixels)
                images = decode(self.pipe, self.device_id, encoded)
            except (OSError, RuntimeError, DecodeError):  # find the bad ones, drop and count them, read on
                keep = [k for k, s in enumerate(samples) if self._decodes(encoded[k], s)]
                stream.damage.samples += len(samples) - len(keep)
                encoded, samples = [encoded[k] for k in keep], [samples[k] for k in keep]
                continue
            for s, im in zip(samples, images):
                s.params = A.draw_sample_params(self.cfg, *im.shape[:2], self.layout["seed"], s.epoch, s.index, 0)
            flat = multicrop(
                images,
                crop_table([s.params for s in samples]),
                mean=self.cfg.mean,
                std=self.cfg.std,
                blur_radius=self.cfg.blur_radius,
                out_dtype=self.out_dtype,
            )
            batch = pinned(finish_batch(flat, samples, self.cfg, self.layout["seed"], self.mask), self.device_id)
            now = (stream.damage.shards, stream.damage.samples)
            batch["skipped"], batch["skipped_shards"] = now[1] - reported[1], now[0] - reported[0]
            reported, samples, encoded = now, [], []
            yield batch, copy_state(state)

    def _decodes(self, encoded, sample) -> bool:
        try:
            check_pixel_budget(encoded, self.max_pixels)
            decode(self.pipe, self.device_id, [encoded])
            return True
        except (OSError, RuntimeError, DecodeError) as e:
            log.warning("skipping sample %d of epoch %d: %s", sample.index, sample.epoch, str(e).splitlines()[0])
            return False
