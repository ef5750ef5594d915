"""The DALI loader in its CPU mode (device_id=None): same batches as the torch loader, on folders and shards."""

import functools
import shutil
import time

import pytest
import torch
from shardkit import write_shards

from fastvit.data import MaskConfig, MultiCropConfig, build_loader, choose_loader, dali_available
from fastvit.data.build import DataOptions
from fastvit.data.sources import source_from_spec

pytestmark = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
SMALL = MultiCropConfig(global_size=32, local_size=16, n_local=3)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_dali_cpu_matches_torch_loader_on_png(png_folder):
    spec = f"imagefolder:{png_folder}"
    kw = dict(batch_size=5, crops=SMALL, seed=2, mask=MaskConfig(patch_size=8))
    dali = take(build_loader(spec, loader="dali", **kw), 2)
    ref = take(build_loader(spec, loader="torch", draft=False, num_workers=0, **kw), 2)
    for d, r in zip(dali, ref):
        assert set(d) == set(r)
        for key in ("global_crops", "local_crops", "labels", "indices", "masks", "mask_weights"):
            assert torch.allclose(d[key], r[key], atol=1e-5), key  # PNG decodes identically


def test_dali_cpu_skips_broken_jpeg_and_resumes(jpeg_folder, tmp_path):
    root = shutil.copytree(jpeg_folder, tmp_path / "data")
    (root / "class_1" / "img_0.jpg").write_bytes(b"garbage, not a jpeg")
    spec = f"imagefolder:{root}"
    loader = build_loader(spec, loader="dali", batch_size=6, crops=SMALL, shuffle=False)
    batches = take(loader, 3)
    assert sum(b["skipped"] for b in batches) == 1 == loader.skipped_total
    assert all(torch.isfinite(b["global_crops"]).all() for b in batches)
    resumed = build_loader(spec, loader="dali", batch_size=6, crops=SMALL, shuffle=False)
    state = loader.state_dict()
    state["sampler"]["pos"] = 6
    state["sampler"]["epoch"] = 0
    resumed.load_state_dict(state)
    assert torch.equal(take(resumed, 1)[0]["global_crops"], batches[1]["global_crops"])


def test_loader_choice(jpeg_folder):
    files = source_from_spec(f"imagefolder:{jpeg_folder}")
    assert choose_loader("auto", files) == "torch"  # no GPU in use: DALI CPU only on request
    assert choose_loader("auto", files, device_id=0) == "dali"
    assert choose_loader("auto", source_from_spec("builtin"), device_id=0) == "torch"
    with pytest.raises(ValueError, match="auto"):
        choose_loader("fast", files)
    with pytest.raises(ValueError, match="builtin"):
        build_loader("builtin", loader="dali", batch_size=2, crops=SMALL)


def test_dali_reads_the_same_shard_stream_and_resumes(tmp_path):
    pattern = f"webdataset:{write_shards(tmp_path, 4, 5)}"
    crops = MultiCropConfig(global_size=16, local_size=8, n_local=1)
    opts = DataOptions(num_workers=0, shuffle_buffer=4, shard_interleave=2)
    make = functools.partial(build_loader, pattern, batch_size=3, crops=crops, seed=2, data=opts)
    torch_batches = [b for _, b in zip(range(5), make(loader="torch"))]
    dali = make(loader="dali")
    it = iter(dali)
    first = [next(it) for _ in range(2)]
    state = dali.state_dict()
    rest = [next(it) for _ in range(3)]
    for a, b in zip(torch_batches, first + rest):  # same samples, labels, order (DALI decodes at full size)
        assert a["indices"].tolist() == b["indices"].tolist() and a["labels"].tolist() == b["labels"].tolist()
    again = make(loader="dali")
    again.load_state_dict(state)
    for a, b in zip(rest, again):
        assert torch.equal(a["global_crops"], b["global_crops"])


def _wait_for(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_dali_prefetch_resumes_from_the_consumed_batches(kind, jpeg_folder, tmp_path):
    """With batches made ahead (data.dali_prefetch=3: two waiting while the trainer holds one), a state taken after
    2 batches resumes at batch 3, not where the background thread got to; every batch equals the uninterrupted
    run's, which equals the one made on demand (dali_prefetch=1)."""
    spec = f"imagefolder:{jpeg_folder}" if kind == "folder" else f"webdataset:{write_shards(tmp_path, 4, 5)}"

    def make(depth):
        opts = DataOptions(num_workers=0, shuffle_buffer=4, shard_interleave=2, dali_prefetch=depth)
        kw = dict(batch_size=3, crops=SMALL, seed=2, mask=MaskConfig(patch_size=8), loader="dali", data=opts)
        return build_loader(spec, **kw)

    same = lambda a, b: torch.equal(a["global_crops"], b["global_crops"]) and torch.equal(a["masks"], b["masks"])  # noqa: E731
    on_demand = take(make(1), 6)
    loader = make(3)
    made = []
    produce = loader._make
    loader._make = lambda: (made.append(1) or item for item in produce())  # counts the batches made
    it = iter(loader)
    first = [next(it) for _ in range(2)]
    assert _wait_for(lambda: len(made) >= 4), len(made)  # the thread ran ahead of the trainer
    state = loader.state_dict()
    rest = [next(it) for _ in range(4)]
    assert all(same(a, b) for a, b in zip(first + rest, on_demand))
    again = make(3)
    again.load_state_dict(state)
    assert all(same(a, b) for a, b in zip(take(again, 4), on_demand[2:]))


def test_dali_prefetch_hands_over_a_producer_error(jpeg_folder):
    loader = build_loader(f"imagefolder:{jpeg_folder}", loader="dali", batch_size=3, crops=SMALL)

    def broken():
        yield from ()
        raise OSError("disk gone")

    loader._make = broken
    with pytest.raises(OSError, match="disk gone"):
        next(iter(loader))
    with pytest.raises(ValueError, match="data.dali_prefetch"):
        build_loader(f"imagefolder:{jpeg_folder}", loader="dali", batch_size=3, data=DataOptions(dali_prefetch=0))
