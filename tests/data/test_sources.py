"""Sources: image folders, webdataset shards written by make-shards, the builtin set, spec errors."""

import io
import os
import tarfile

import numpy as np
import pytest
from conftest import exif_rotated_jpeg, image_of

from fastvit.data import shards
from fastvit.data.builtin import BuiltinSource
from fastvit.data.decode import decode_bytes, decode_rgb, open_image, oriented_size
from fastvit.data.shardio import Damage, expand_braces, parse_label, tar_samples
from fastvit.data.sources import ImageFolderSource, source_from_spec


def test_image_folder_labels_and_flat(jpeg_folder, tmp_path):
    src = source_from_spec(f"imagefolder:{jpeg_folder}")
    assert len(src) == 18 and src.num_classes == 3
    data, label = src.read(7)
    assert label == 1 and decode_bytes(data).shape == (97, 61, 3)
    flat = tmp_path / "flat"
    flat.mkdir()
    image_of(0, 0).save(flat / "a.png")
    (flat / "notes.txt").write_text("not an image")
    src = source_from_spec(f"imagefolder:{flat}")
    assert len(src) == 1 and src.read(0)[1] == -1 and src.num_classes is None


def test_missing_and_empty_sources_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        source_from_spec(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="no image files"):
        source_from_spec(f"imagefolder:{tmp_path}")
    with pytest.raises(ValueError, match="no shard matches"):
        source_from_spec(f"webdataset:{tmp_path}/shard-{{000..003}}.tar")
    with pytest.raises(ValueError, match="unknown data source"):
        source_from_spec("s3://bucket")
    with pytest.raises(ValueError, match="needs a path"):
        source_from_spec("imagefolder:")


def test_brace_expansion():
    assert expand_braces("s-{008..011}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar", "s-011.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]


def test_make_shards_round_trip(jpeg_folder, tmp_path, capsys):
    assert shards.main([str(jpeg_folder), str(tmp_path), "--per-shard", "7"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert "webdataset:" in capsys.readouterr().out
    folder = ImageFolderSource(str(jpeg_folder))
    wds = source_from_spec(f"webdataset:{tmp_path}/shard-{{000000..000002}}.tar", max_images=0)
    assert len(wds) == len(folder)
    assert sorted(wds.read(i) for i in range(len(wds))) == sorted(folder.read(i) for i in range(len(folder)))


def test_webdataset_json_labels_and_truncated_shard(tmp_path):
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            buf = io.BytesIO()
            image_of(i, i).save(buf, "PNG")
            for name, data in ((f"{i}.png", buf.getvalue()), (f"{i}.json", b'{"label": %d}' % (i + 5))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    damage = Damage()
    assert [parse_label(m) for _, m in tar_samples(str(path), damage)] == [5, 6, 7]
    raw = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: len(raw) // 2])
    got = list(tar_samples(str(cut), damage))
    assert 1 <= len(got) < 3 and damage.shards == 1 and damage.samples == 1  # the sample the cut runs through


def test_builtin_deterministic_with_disjoint_splits():
    a, b = BuiltinSource("train", n=20), BuiltinSource("train", n=20)
    img, label = a.read(13)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and label == 3
    assert np.array_equal(img, b.read(13)[0])
    assert not np.array_equal(img, BuiltinSource("val", n=20).read(13)[0])
    assert len(source_from_spec("builtin", "val")) == 1000 and source_from_spec("builtin:val").split == "val"
    labels = [a.read(i)[1] for i in range(20)]
    assert sorted(set(labels)) == list(range(10))


def test_builtin_classes_are_separable_by_shape():
    # the same class at two seeds differs in pixels; a nearest-centroid on gray-level masks of
    # class renderings separates classes far above chance (10%)
    src = BuiltinSource("train", n=400, size=32)
    x = np.stack([src.read(i)[0].astype(np.float32).mean(-1) for i in range(400)])
    x = np.abs(x - np.median(x.reshape(400, -1), 1)[:, None, None]).reshape(400, -1)
    y = np.arange(400) % 10
    feats = np.abs(np.fft.fft2(x.reshape(400, 32, 32))).reshape(400, -1)  # translation invariant
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    centroids = np.stack([feats[:300][y[:300] == k].mean(0) for k in range(10)])
    acc = ((feats[300:] @ centroids.T).argmax(1) == y[300:]).mean()
    assert acc > 0.3, acc


def test_exif_orientation_and_draft_decode():
    img = image_of(2, 2)  # 120 x 150 (H x W)
    data = exif_rotated_jpeg(img, 6)  # rotated 90 degrees on display
    pil = open_image(data)
    assert oriented_size(pil) == (150, 120)
    full = decode_rgb(open_image(data))
    assert full.shape == (150, 120, 3)
    half = decode_rgb(open_image(data), reduce=2)
    assert half.shape == (75, 60, 3)
    down = np.asarray(full, np.float32).reshape(75, 2, 60, 2, 3).mean((1, 3))
    assert np.abs(half - down).mean() < 6  # same picture at half scale
