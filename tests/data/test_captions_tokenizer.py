"""Tokenizers (byte-level, Hugging Face JSON) and caption sources (builtin, folder + captions file, shards)."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fastvit.config import load_config
from fastvit.data import MultiCropConfig, build_loader
from fastvit.data.build import DataOptions
from fastvit.data.builtin import (
    CAPTION_TEMPLATES,
    CLASSES,
    BuiltinSource,
    class_prompts,
    colour_name,
    describe,
    pixel_grid,
    scene_mask,
)
from fastvit.data.captions import captioned_source
from fastvit.data.stream import INDEX_BITS
from fastvit.data.tokenizer import ByteTokenizer, build_tokenizer


def test_byte_tokenizer_packs_and_truncates():
    tok = ByteTokenizer(context_length=6)
    ids, eot = tok.encode_batch(["ab", "abcdefgh"])
    assert ids[0].tolist() == [257, 98, 99, 258, 0, 0] and eot[0].item() == 3
    assert ids[1].tolist() == [257, 98, 99, 100, 101, 258] and eot[1].item() == 5  # the end token stays last


def test_hf_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "disk": 5}
    t = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    t.save(str(tmp_path / "tok.json"))
    tok = build_tokenizer(str(tmp_path / "tok.json"), context_length=5)
    ids, eot = tok.encode_batch(["a disk", "a star"])
    assert ids.tolist() == [[2, 4, 5, 3, 0], [2, 4, 1, 3, 0]] and eot.tolist() == [3, 3]
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        build_tokenizer(str(tmp_path / "missing.json"))


def _png(color):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_caption_sources(tmp_path):
    src = captioned_source("builtin", "train")
    payload, label = src.read(13)
    assert label == 3 and payload.ndim == 3 and "ring" in src.caption(13)  # the source's label 13 % 10 = 3

    (tmp_path / "imgs" / "cats").mkdir(parents=True)
    for name in ("x.png", "y.png", "z.png"):
        (tmp_path / "imgs" / "cats" / name).write_bytes(_png(10))
    (tmp_path / "caps.tsv").write_text("cats/x.png\ta grey cat\ncats/z.png\tanother cat\n")
    src = captioned_source(f"imagefolder:{tmp_path / 'imgs'}", captions=str(tmp_path / "caps.tsv"))
    assert len(src) == 2 and [src.caption(i) for i in range(2)] == ["a grey cat", "another cat"]
    with pytest.raises(ValueError, match="captions"):
        captioned_source(f"imagefolder:{tmp_path / 'imgs'}")

    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        _add(tar, "000.png", _png(0))
        _add(tar, "000.txt", b"  a black square \n")
        _add(tar, "001.png", _png(255))
        _add(tar, "001.json", json.dumps({"caption": "white", "label": 3}).encode())
        _add(tar, "002.png", _png(128))
    src = captioned_source(f"webdataset:{tmp_path / 's.tar'}")  # streamed: the captions come in the batches
    opts = DataOptions(num_workers=0, shuffle_buffer=1)
    (batch,) = take(build_loader(src, batch_size=3, crops=MultiCropConfig(global_size=8, n_local=0), data=opts), 1)
    by_ordinal = dict(zip((batch["indices"] & ((1 << INDEX_BITS) - 1)).tolist(), batch["captions"]))
    assert by_ordinal == {0: "a black square", 1: "white", 2: ""}
    assert dict(zip(batch["captions"], batch["labels"].tolist()))["white"] == 3  # the json's label


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_builtin_captions_name_the_colours_the_image_shows():
    """A builtin caption names the sample's class and, where its template has them, the colour names of its
    shape and background as the rendered pixels show them (the mean colour of the shape's pixels and of the
    rest, noise averaged out)."""
    assert [colour_name(np.array(c)) for c in ((1, 0, 0), (0, 0.1, 0.9), (0.5, 0.5, 0.5), (0.05, 0.05, 0.05))] == [
        "red",
        "blue",
        "gray",
        "black",
    ]
    src, agree, named = BuiltinSource("train", size=64), 0, 0
    y, x = pixel_grid(64)
    for i in range(150):
        img, label = src.read(i)
        sc = src.scene(i)
        mask = scene_mask(sc, y, x)
        fg, bg = (colour_name(img[m].mean(0) / 255) for m in (mask, ~mask))
        caption, template = src.caption(i), CAPTION_TEMPLATES[(i // 10) % len(CAPTION_TEMPLATES)]
        assert CLASSES[label] in caption and describe(sc, i // 10) == caption
        for key, name in (("{fg}", fg), ("{bg}", bg)):
            if key in template:
                named += 1
                agree += f" {name} " in f" {caption} ".replace(".", " ")
    assert named == 150 and agree >= 0.9 * named, agree  # 100 shape colours, 50 background colours


def test_demo_clip_context_holds_every_builtin_caption_whole():
    """The byte tokenizer cuts a caption to the context length; demo_clip's must fit the longest built-in caption
    (at 32 tokens the colour words of the longer templates were cut off)."""
    cfg = load_config("demo_clip", [])
    tok = build_tokenizer(cfg.objective.clip.tokenizer, cfg.objective.clip.context_length)
    captions = [c for shape in CLASSES for c in class_prompts(shape)]  # every template x colour pair
    ids, eot = tok.encode_batch(captions)
    whole = torch.tensor([len(tok.tokens(c)) + 1 for c in captions])  # start token, the caption, end token
    assert torch.equal(eot, whole), max(captions, key=len)
    assert torch.equal(ids[torch.arange(len(captions)), eot], torch.full((len(captions),), tok.eot_id))
