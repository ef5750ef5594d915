"""The fused multi-crop kernel (C++, and CUDA on a GPU) against the float64 torch reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastvit.data import augment as A
from fastvit.data.multicrop import crop_views, multicrop, multicrop_ref, resample_matrix
from fastvit.testing import assert_close

# fp32 tolerance: the kernels accumulate the resampling taps and colour math in float32 while the
# reference runs in float64; relative error ~1e-6 on values up to ~2.6 after normalisation. Only the
# ordering of float32 sums differs, so 1e-4 absolute is ample yet catches any one-tap or op mistake
# (those are >= 1e-2).
FP32_ATOL = 1e-4


def random_images(rng, shapes):
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def random_table(rng, shapes, n_per_image, sizes, everything_on=False):
    rows = []
    cfg = A.MultiCropConfig(global_size=sizes[0], local_size=sizes[1], n_global=1, n_local=n_per_image - 1)
    for b, (h, w) in enumerate(shapes):
        r = A.draw_sample_params(cfg, h, w, seed=1, epoch=0, index=b)
        r[:, A.IMAGE] = b
        rows.append(r)
    table = np.concatenate(rows)
    table[::2, A.Y0] += 0.37  # fractional boxes (as after draft decoding), still inside the image
    table[::2, A.BOX_H] -= 0.5
    if everything_on:
        n = len(table)
        table[:, A.JITTER] = 1
        table[:, A.BRIGHTNESS : A.HUE + 1] = np.stack(
            [rng.uniform(0.6, 1.4, n), rng.uniform(0.6, 1.4, n), rng.uniform(0.8, 1.2, n), rng.uniform(-0.1, 0.1, n)], 1
        )
        table[:, A.ORDER0 : A.ORDER0 + 4] = np.stack([rng.permutation(4) for _ in range(n)])
        table[:, A.FLIP] = rng.integers(0, 2, n)
        table[:, A.GRAY] = rng.random(n) < 0.3
        table[:, A.SIGMA] = np.where(rng.random(n) < 0.7, rng.uniform(0.1, 2.0, n), 0)
        table[:, A.SOLARIZE] = rng.random(n) < 0.5
    return table


def test_resample_matrix_matches_torch_antialiased_bicubic():
    img = torch.randint(0, 256, (41, 57, 3), dtype=torch.float64)
    for y0, x0, h, w, size in [(3, 5, 30, 40, 17), (0, 0, 41, 57, 64), (10, 7, 11, 9, 20), (1, 2, 39, 51, 7)]:
        wy, wx = resample_matrix(y0, h, size, 41), resample_matrix(x0, w, size, 57)
        ours = torch.einsum("yh,hwc,xw->cyx", wy, img, wx)
        crop = img[y0 : y0 + h, x0 : x0 + w].permute(2, 0, 1)[None]
        theirs = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
        assert_close(ours, theirs, atol=1e-9, rtol=0, name=f"resample {(y0, x0, h, w, size)}")


@pytest.mark.parametrize("everything_on", [False, True])
def test_cpp_matches_reference_fp32(everything_on):
    rng = np.random.default_rng(0)
    shapes = [(40, 50), (61, 33), (127, 90), (23, 200)]
    images = random_images(rng, shapes)
    table = random_table(rng, shapes, 3, (31, 13), everything_on)
    out = multicrop(images, table, backend="cpp", num_threads=2)
    ref = multicrop_ref(images, table)
    for k, (a, b) in enumerate(zip(crop_views(out, table), ref)):
        assert_close(a, b, atol=FP32_ATOL, rtol=0, name=f"crop {k}")


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue", "gray", "blur", "solarize", "flip"])
def test_each_op_alone(op):
    rng = np.random.default_rng(1)
    images = random_images(rng, [(45, 38)])
    table = random_table(rng, [(45, 38)], 2, (19, 11))
    table[:, A.FLIP] = table[:, A.GRAY] = table[:, A.SIGMA] = table[:, A.SOLARIZE] = table[:, A.JITTER] = 0
    col = {"brightness": A.BRIGHTNESS, "contrast": A.CONTRAST, "saturation": A.SATURATION, "hue": A.HUE}
    if op in col:
        table[:, A.JITTER] = 1
        table[:, A.BRIGHTNESS : A.HUE + 1] = [1, 1, 1, 0]
        table[:, col[op]] = 0.23 if op == "hue" else 1.35
        table[:, A.ORDER0 : A.ORDER0 + 4] = [3, 2, 1, 0]
    else:
        table[:, {"gray": A.GRAY, "blur": A.SIGMA, "solarize": A.SOLARIZE, "flip": A.FLIP}[op]] = 1.3
    plain = multicrop_ref(images, np.where(np.arange(A.NUM_COLS) >= A.FLIP, 0, table))
    ref = multicrop_ref(images, table)
    assert any((a - b).abs().max() > 1e-2 for a, b in zip(plain, ref)), f"{op} changed nothing in the reference"
    out = crop_views(multicrop(images, table, backend="cpp"), table)
    for a, b in zip(out, ref):
        assert_close(a, b, atol=FP32_ATOL, rtol=0, name=op)


def test_cpp_matches_reference_on_a_large_image():
    # tap positions near x = 1000 px: float32 positions would be off by ~6e-5 px (visible on noise)
    rng = np.random.default_rng(4)
    images = random_images(rng, [(700, 1000)])
    table = np.zeros((2, A.NUM_COLS))
    boxes = [[10.37, 35.5, 680.2, 950.1, 224], [400.6, 810.3, 290, 185.4, 98]]  # y0, x0, h, w, S
    table[:, [A.Y0, A.X0, A.BOX_H, A.BOX_W, A.SIZE]] = boxes
    table[:, [A.JITTER, A.BRIGHTNESS, A.CONTRAST, A.SATURATION, A.HUE]] = [1, 1.2, 0.7, 1.3, -0.08]
    table[:, A.ORDER0 : A.ORDER0 + 4] = [[2, 0, 3, 1], [1, 3, 2, 0]]
    table[:, [A.FLIP, A.SIGMA, A.SOLARIZE]] = [[1, 1.7, 1], [0, 0.6, 0]]
    out = multicrop(images, table, backend="cpp", num_threads=1)
    for k, (a, b) in enumerate(zip(crop_views(out, table), multicrop_ref(images, table))):
        assert_close(a, b, atol=FP32_ATOL, rtol=0, name=f"large image crop {k}")


@pytest.mark.parametrize("shift", [-0.5, -0.23, 0.1, 0.5])
def test_hue_on_ties_and_extremes(shift):
    # A crop of the whole image at its own size resamples exactly (taps at integer offsets), so the
    # hue step sees these pixels as they are: ties between the max channels, grays, primaries.
    special = [
        (200, 200, 10),
        (10, 200, 200),
        (200, 10, 200),
        (77, 77, 77),
        (0, 0, 0),
        (255, 255, 255),
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (1, 0, 0),
        (255, 254, 254),
        (128, 127, 128),
    ]
    rng = np.random.default_rng(5)
    pixels = np.concatenate([np.array(special, np.uint8), rng.integers(0, 256, (12 * 12 - len(special), 3))])
    images = [pixels.astype(np.uint8).reshape(12, 12, 3)]
    table = np.zeros((1, A.NUM_COLS))
    table[0, [A.BOX_H, A.BOX_W, A.SIZE, A.JITTER]] = [12, 12, 12, 1]
    table[0, A.BRIGHTNESS : A.HUE + 1] = [1, 1, 1, shift]
    table[0, A.ORDER0 : A.ORDER0 + 4] = [3, 0, 1, 2]
    out = crop_views(multicrop(images, table, backend="cpp"), table)[0]
    assert_close(out, multicrop_ref(images, table)[0], atol=FP32_ATOL, rtol=0, name=f"hue {shift}")


def test_cpp_reads_tensors_and_strided_arrays_in_place():
    rng = np.random.default_rng(6)
    big = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    images = [torch.from_numpy(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)), big[5:50, 10:80]]  # a view
    table = random_table(rng, [(40, 50), (45, 70)], 2, (16, 9), everything_on=True)
    out = multicrop(images, table, backend="cpp")
    ref = multicrop_ref([images[0].numpy(), np.ascontiguousarray(images[1])], table)
    for a, b in zip(crop_views(out, table), ref):
        assert_close(a, b, atol=FP32_ATOL, rtol=0, name="tensor / strided input")


def test_cpp_bf16_output():
    rng = np.random.default_rng(2)
    shapes = [(50, 70), (33, 33)]
    images = random_images(rng, shapes)
    table = random_table(rng, shapes, 4, (24, 12), everything_on=True)
    out = multicrop(images, table, backend="cpp", out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    for a, b in zip(crop_views(out, table), multicrop_ref(images, table)):
        # one bf16 rounding of values < 4: at most one ulp (2^-6) apart from rounding the reference
        assert_close(a.float(), b.to(torch.bfloat16).float(), atol=2**-6, rtol=0, name="bf16")


def test_table_validation():
    images = [np.zeros((20, 30, 3), np.uint8)]
    table = np.zeros((1, A.NUM_COLS), np.float32)
    table[0, [A.BOX_H, A.BOX_W, A.SIZE]] = [10, 10, 8]
    multicrop(images, table)
    with pytest.raises(ValueError, match="extends past"):
        bad = table.copy()
        bad[0, A.X0] = 25
        multicrop(images, bad)
    with pytest.raises(ValueError, match="IMAGE column"):
        bad = table.copy()
        bad[0, A.IMAGE] = 1
        multicrop(images, bad)
    with pytest.raises(ValueError, match="HWC uint8"):
        multicrop([np.zeros((20, 30), np.uint8)], table)
    with pytest.raises(ValueError, match="blur_radius"):
        bad = table.copy()
        bad[0, A.SIZE] = 4
        multicrop(images, bad)


def test_params_deterministic_from_seed_epoch_index():
    cfg = A.MultiCropConfig()
    a = A.draw_sample_params(cfg, 300, 400, seed=3, epoch=1, index=17)
    assert np.array_equal(a, A.draw_sample_params(cfg, 300, 400, seed=3, epoch=1, index=17))
    for other in [(4, 1, 17), (3, 2, 17), (3, 1, 18)]:
        assert not np.array_equal(a, A.draw_sample_params(cfg, 300, 400, *other))
    assert a.shape == (10, A.NUM_COLS)
    assert (a[:2, A.SIZE] == 224).all() and (a[2:, A.SIZE] == 98).all()
    assert (a[:, A.Y0] + a[:, A.BOX_H] <= 300).all() and (a[:, A.X0] + a[:, A.BOX_W] <= 400).all()
    assert a[2:, A.SOLARIZE].sum() == 0 and a[0, A.SOLARIZE] == 0 and a[0, A.SIGMA] > 0  # blur p=1 on global 1


def test_draw_statistics_follow_config():
    cfg = A.MultiCropConfig()
    rows = np.stack([A.draw_sample_params(cfg, 256, 256, 0, 0, i) for i in range(400)])  # (400, 10, cols)
    area = rows[:, :, A.BOX_H] * rows[:, :, A.BOX_W] / 256**2
    assert 0.3 <= area[:, :2].min() and area[:, :2].max() <= 1.01
    assert 0.04 <= area[:, 2:].min() and area[:, 2:].max() <= 0.34
    assert abs(rows[:, :, A.JITTER].mean() - 0.8) < 0.05 and abs(rows[:, :, A.GRAY].mean() - 0.2) < 0.05
    assert abs((rows[:, 1, A.SIGMA] > 0).mean() - 0.1) < 0.05 and abs((rows[:, 2:, A.SIGMA] > 0).mean() - 0.5) < 0.05
    assert abs(rows[:, 1, A.SOLARIZE].mean() - 0.2) < 0.06


def test_draft_factor_keeps_crops_at_output_resolution():
    rows = np.zeros((2, A.NUM_COLS))
    rows[:, [A.BOX_H, A.BOX_W, A.SIZE]] = [[900, 1000, 224], [450, 400, 98]]
    assert A.draft_factor(rows) == 4  # 400 / 98 >= 4, 900 / 224 >= 4
    rows[1, A.BOX_W] = 150
    assert A.draft_factor(rows) == 1
    scaled = A.rescale_boxes(rows, 1000, 1200, 250, 300)
    assert np.allclose(scaled[:, [A.BOX_H, A.BOX_W]], rows[:, [A.BOX_H, A.BOX_W]] / 4)


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpp(out_dtype):
    rng = np.random.default_rng(3)
    shapes = [(40, 50), (61, 33), (300, 400), (23, 200)]
    images = random_images(rng, shapes)
    table = random_table(rng, shapes, 10, (224, 98), everything_on=True)
    cpu = multicrop(images, table, backend="cpp", out_dtype=out_dtype)
    gpu = multicrop([torch.from_numpy(im).cuda() for im in images], table, backend="cuda", out_dtype=out_dtype)
    atol = FP32_ATOL if out_dtype == torch.float32 else 2**-6
    assert_close(gpu.cpu().float(), cpu.float(), atol=atol, rtol=0, name=f"cuda vs cpp {out_dtype}")
