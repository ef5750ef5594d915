"""The torch loader: batch contents, determinism, exact resume, rank sharding, broken files."""

import shutil

import numpy as np
import pytest
import torch

from fastvit.data import MaskConfig, MultiCropConfig, ResumableSampler, build_loader
from fastvit.data.builtin import BuiltinSource

SMALL = MultiCropConfig(global_size=32, local_size=16, n_local=3)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_batch_dict_from_builtin():
    (b,) = take(build_loader("builtin", batch_size=6, crops=SMALL, mask=MaskConfig(patch_size=8), num_workers=0), 1)
    assert b["global_crops"].shape == (12, 3, 32, 32) and b["local_crops"].shape == (18, 3, 16, 16)
    assert b["labels"].tolist() == (b["indices"] % 10).tolist() and b["skipped"] == 0
    assert b["masks"].shape == (12, 16) and b["masks"].any(1).sum() <= 6
    assert b["mask_indices"].numel() == b["n_masked"] == b["masks"].sum()
    # each masked crop's weights sum to one
    crop_of = b["mask_indices"] // 16
    sums = torch.zeros(12).index_add_(0, crop_of, b["mask_weights"])
    assert torch.allclose(sums[b["masks"].any(1)], torch.ones(1))
    # normalised values: an ImageNet-normalised [0, 1] image lies in [-2.2, 2.7]
    assert b["global_crops"].min() >= -2.2 and b["global_crops"].max() <= 2.7


def test_same_batches_with_and_without_workers(jpeg_folder):
    spec = f"imagefolder:{jpeg_folder}"
    a = take(build_loader(spec, batch_size=4, crops=SMALL, seed=5, num_workers=0), 3)
    b = take(build_loader(spec, batch_size=4, crops=SMALL, seed=5, num_workers=2), 3)
    for x, y in zip(a, b):
        assert torch.equal(x["global_crops"], y["global_crops"]) and torch.equal(x["local_crops"], y["local_crops"])
        assert torch.equal(x["labels"], y["labels"])
    c = take(build_loader(spec, batch_size=4, crops=SMALL, seed=6, num_workers=0), 1)[0]
    assert not torch.equal(a[0]["global_crops"], c["global_crops"])


def test_resume_continues_at_the_exact_next_sample():
    src = BuiltinSource("train", n=40, size=32)
    full = take(build_loader(src, batch_size=8, crops=SMALL, num_workers=0), 7)  # crosses an epoch (5 per epoch)
    first = build_loader(src, batch_size=8, crops=SMALL, num_workers=2)
    take(first, 4)
    state = first.state_dict()
    assert state["sampler"]["epoch"] == 0 and state["sampler"]["pos"] == 32
    resumed = build_loader(src, batch_size=8, crops=SMALL, num_workers=2)
    resumed.load_state_dict(state)
    for want, got in zip(full[4:], take(resumed, 3)):
        assert torch.equal(want["indices"], got["indices"]) and torch.equal(want["epochs"], got["epochs"])
        assert torch.equal(want["global_crops"], got["global_crops"])
    assert full[5]["epochs"].tolist() == [1] * 8
    assert sorted(torch.cat([b["indices"] for b in full[:5]]).tolist()) == list(range(40))  # an epoch is a permutation


def test_sampler_shards_by_rank_and_checks_state():
    per_rank = [ResumableSampler(103, rank=r, world_size=4, seed=1).epoch_indices(2) for r in range(4)]
    assert all(len(p) == 25 for p in per_rank)
    assert len(set(np.concatenate(per_rank).tolist())) == 100
    s = ResumableSampler(103, world_size=4, seed=1)
    s.advance(60)
    assert (s.epoch, s.pos) == (2, 10)
    with pytest.raises(ValueError, match="world_size"):
        ResumableSampler(103, world_size=2, seed=1).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(10, rank=2, world_size=2)


def test_broken_files_are_skipped_and_counted(jpeg_folder, tmp_path):
    root = shutil.copytree(jpeg_folder, tmp_path / "data")
    (root / "class_0" / "img_1.jpg").write_bytes(b"this is not a jpeg")  # non-image
    raw = (root / "class_2" / "img_3.jpg").read_bytes()
    (root / "class_2" / "img_3.jpg").write_bytes(raw[: len(raw) // 3])  # truncated
    loader = build_loader(f"imagefolder:{root}", batch_size=6, crops=SMALL, num_workers=2, shuffle=False)
    batches = take(loader, 3)  # one full epoch of 18 files
    assert sum(b["skipped"] for b in batches) == 2 == loader.skipped_total
    assert all(b["global_crops"].shape[0] == 12 and torch.isfinite(b["global_crops"]).all() for b in batches)
    assert loader.state_dict()["skipped_total"] == 2


def test_bf16_output_and_batch_size_check():
    (b,) = take(build_loader("builtin", batch_size=2, crops=SMALL, num_workers=0, out_dtype=torch.bfloat16), 1)
    assert b["global_crops"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(BuiltinSource(n=10), batch_size=11, crops=SMALL)
