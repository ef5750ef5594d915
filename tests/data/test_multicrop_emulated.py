"""The CUDA multi-crop kernels (csrc/augment/multicrop_kernels.cuh) on the CPU, through the host emulation of the
CUDA runtime (csrc/emulation/cuda_host.h): the kernel bodies and their launch code compiled unchanged as host C++,
blocks in turn, a block's threads as OS threads, __syncthreads a barrier, launch limits checked. Compared with the
C++ path and the float64 reference, and once as an executable under AddressSanitizer."""

import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from test_multicrop import FP32_ATOL, random_images, random_table

from fastvit import _ext
from fastvit.data import augment as A
from fastvit.data.multicrop import (
    _check_params,
    crop_offsets,
    crop_views,
    launch_kernels,
    multicrop,
    multicrop_ref,
    pack_images,
)
from fastvit.testing import assert_close

CSRC = Path(__file__).resolve().parents[2] / "csrc"
# the shapes of test_cuda_matches_cpp, fewer crops: the 300 x 400 image is where float tap positions missed
SHAPES = [(40, 50), (300, 400), (23, 200)]


def _case(seed=3, n_per_image=4):
    rng = np.random.default_rng(seed)
    images = random_images(rng, SHAPES)
    table = random_table(rng, SHAPES, n_per_image, (224, 98), everything_on=True)
    return images, table


def _emulated(images, table, out_dtype, blur_radius=4):
    flat_u8, offsets, shapes = pack_images([torch.from_numpy(im) for im in images])
    params = _check_params(table, shapes.numpy(), blur_radius)
    args = (list(A.IMAGENET_MEAN), list(A.IMAGENET_STD), blur_radius, out_dtype)
    return launch_kernels(_ext.emulated(), flat_u8, offsets, shapes, params, *args)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_emulated_cuda_matches_cpp_and_reference(out_dtype):
    images, table = _case(n_per_image=4 if out_dtype == torch.float32 else 2)
    cuda = _emulated(images, table, out_dtype)
    cpp = multicrop(images, table, backend="cpp", out_dtype=out_dtype)
    assert not cuda.float().isnan().any(), "the emulated kernels left outputs unwritten"
    if out_dtype == torch.float32:
        # float32 on both paths, tap positions in double on both: they differ by the order of float sums only
        assert_close(cuda, cpp, atol=FP32_ATOL / 10, rtol=0, name="emulated cuda vs cpp")
        for k, (a, b) in enumerate(zip(crop_views(cuda, table), multicrop_ref(images, table))):
            assert_close(a, b, atol=FP32_ATOL, rtol=0, name=f"emulated cuda vs float64 reference, crop {k}")
    else:  # one bf16 rounding of nearly equal float32 values: at most one ulp (2^-6 below 4) apart
        assert_close(cuda.float(), cpp.float(), atol=2**-6, rtol=0, name="emulated cuda vs cpp, bf16")


def test_emulated_cuda_each_op_at_the_image_edge():
    """Crops touching the right and bottom edges of the large image (the taps' clamps) with each op alone."""
    rng = np.random.default_rng(7)
    images = random_images(rng, [(300, 400)])
    table = np.zeros((5, A.NUM_COLS), np.float32)
    table[:, [A.Y0, A.X0, A.BOX_H, A.BOX_W, A.SIZE]] = [250.3, 340.6, 49.7, 59.4, 37]
    table[:, A.JITTER] = [1, 1, 0, 0, 0]
    table[:, A.BRIGHTNESS : A.HUE + 1] = [1.3, 0.7, 1.2, 0.2]
    table[0, A.ORDER0 : A.ORDER0 + 4] = [1, 0, 2, 3]
    table[1, A.ORDER0 : A.ORDER0 + 4] = [3, 2, 0, 1]
    table[2, A.GRAY], table[3, A.SIGMA], table[4, [A.SOLARIZE, A.FLIP]] = 1, 1.5, 1
    cuda = _emulated(images, table, torch.float32)
    for k, (a, b) in enumerate(zip(crop_views(cuda, table), multicrop_ref(images, table))):
        assert_close(a, b, atol=FP32_ATOL, rtol=0, name=f"edge crop {k}")


def test_emulated_launch_limits():
    emu = _ext.emulated()
    assert emu.probe_launch((3, 2, 1), (32, 4, 1)) == 6
    assert "1024 threads" in emu.probe_launch((1, 1, 1), (1025, 1, 1))
    assert "1024 threads" in emu.probe_launch((1, 1, 1), (32, 32, 2))
    assert "grid dimension" in emu.probe_launch((1, 65536, 1), (1, 1, 1))
    assert "48 KB" in emu.probe_launch((1, 1, 1), (1, 1, 1), 48 * 1024)
    assert 4096 <= emu.static_shared_bytes() <= 48 * 1024  # finish_kernel's reduction buffer and blur taps
    # the multicrop launch itself goes through the checks: crops above 4095 px need more than 65535 pixel blocks
    images = [np.zeros((4200, 8, 3), np.uint8)]
    table = np.zeros((1, A.NUM_COLS), np.float32)
    table[0, [A.BOX_H, A.BOX_W, A.SIZE]] = [4200, 8, 4100]
    with pytest.raises(RuntimeError, match="grid dimension"):
        _emulated(images, table, torch.float32)


def _compiler():
    """The C++ compiler of this build: $CXX as sysconfig records it, else c++ / g++ / clang++ on PATH."""
    for cand in [(sysconfig.get_config_var("CXX") or "").split(" ")[0], "c++", "g++", "clang++"]:
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _build_asan(tmp_path):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler on PATH to build the AddressSanitizer executable")
    probe = tmp_path / "probe.cpp"
    probe.write_text("int main() { return 0; }\n")
    flags = ["-std=c++17", "-fsanitize=address", "-fno-omit-frame-pointer", "-pthread"]
    if subprocess.run([cxx, *flags, str(probe), "-o", str(tmp_path / "probe")], capture_output=True).returncode:
        pytest.skip(f"{cxx} cannot link -fsanitize=address here (no AddressSanitizer runtime)")
    exe = tmp_path / "multicrop_main"
    src = CSRC / "emulation" / "multicrop_main.cpp"
    proc = subprocess.run(
        [cxx, *flags, "-O1", "-g", f"-I{CSRC}", str(src), "-o", str(exe)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return exe


def test_emulated_cuda_under_address_sanitizer(tmp_path):
    """Every buffer its own allocation of the exact size: a read or write past one is an ASan report (exit != 0);
    the output starts as NaN everywhere, so every element must be written."""
    exe = _build_asan(tmp_path)
    images, table = _case(seed=11, n_per_image=2)
    flat_u8, offsets, shapes = pack_images([torch.from_numpy(im) for im in images])
    params = _check_params(table, shapes.numpy(), 4)
    out_off, total = crop_offsets(params)
    case = tmp_path / "case"
    case.mkdir()
    for name, arr in [
        ("images.u8", flat_u8.numpy()),
        ("image_offsets.i64", offsets.numpy()),
        ("image_shapes.i64", shapes.numpy()),
        ("params.f32", params),
        ("out_offsets.i64", out_off),
    ]:
        arr.tofile(case / name)
    meta = [len(params), int(params[:, A.SIZE].max()), total, 0, 4, *A.IMAGENET_MEAN, *A.IMAGENET_STD]
    (case / "meta.txt").write_text(" ".join(str(v) for v in meta))
    proc = subprocess.run([str(exe), str(case)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    out = torch.from_numpy(np.fromfile(case / "out.bin", np.float32))
    assert out.numel() == total and not out.isnan().any(), "outputs left unwritten under ASan"
    assert_close(out, multicrop(images, table, backend="cpp"), atol=FP32_ATOL / 10, rtol=0, name="asan vs cpp")
