"""The DALI loader in its CPU mode (device_id=None): same batches as the torch loader."""

import shutil

import pytest
import torch

from fastvit.data import MaskConfig, MultiCropConfig, build_loader, choose_loader, dali_available
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
