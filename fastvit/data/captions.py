"""Image + caption sources for the CLIP baseline.

`captioned_source(spec, split, captions=...)` is the source a CLIP run trains on. Captions come from
- builtin: derived from the class of each image (BuiltinSource.caption);
- imagefolder: a captions file, `.jsonl` ({"file": relative path, "caption": text} per line) or
  tab-separated lines `relative/path.jpg<TAB>caption`; only images with a caption are used;
- webdataset shards: the sample's `txt` member, else the `caption` / `text` field of its `json` member ("" when
  neither), read by the shard stream with the sample's image: each batch carries them (batch["captions"]), and
  nothing is read at start-up.
For the first two the source is wrapped with `caption(i)`, the text of sample i; the loader's `read_indices` name
the samples it actually decoded (also where it replaced an unreadable one).
"""

import json
import os

from fastvit.data.sources import ImageFolderSource, ShardSource, source_from_spec


class CaptionedSource:
    """source + caption function; read(i) is the source's."""

    def __init__(self, source, caption_fn):
        self.source, self._caption = source, caption_fn
        self.spec, self.num_classes = source.spec, None
        self.index_skipped = getattr(source, "index_skipped", 0)

    def __len__(self):
        return len(self.source)

    def read(self, i):
        return self.source.read(i)

    def caption(self, i):
        return self._caption(i)


def read_captions_file(path):
    """{relative path: caption} from a .jsonl or a tab-separated captions file."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                row = json.loads(line)
                key, text = row.get("file", row.get("image")), row.get("caption", row.get("text"))
            else:
                key, _, text = line.rstrip("\n").partition("\t")
            if not key or text is None:
                raise ValueError(f"{path}:{n}: expected a file and a caption, got {line.strip()[:80]!r}")
            out[os.path.normpath(key)] = text
    return out


def folder_with_captions(root, captions_path):
    """An ImageFolderSource restricted to the images the captions file names, and their captions."""
    if not os.path.isfile(captions_path):
        raise ValueError(f"data.captions={captions_path!r}: no such file")
    table = read_captions_file(captions_path)
    src = ImageFolderSource(root)
    keep = [k for k, f in enumerate(src.files) if os.path.relpath(f, root) in table]
    if not keep:
        raise ValueError(f"none of the {len(src.files)} images under {root} has a caption in {captions_path}")
    src.files, src.labels = [src.files[k] for k in keep], src.labels[keep]
    texts = [table[os.path.relpath(f, root)] for f in src.files]
    return CaptionedSource(src, texts.__getitem__)


def captioned_source(spec, split="train", *, seed=0, captions=""):
    """A CaptionedSource for `builtin`, `webdataset:PATTERN` or `imagefolder:PATH` (+ captions file)."""
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder":
        if not captions:
            raise ValueError(f"data.source={spec!r} has no captions: set data.captions to a .jsonl or .tsv file")
        return folder_with_captions(os.path.expanduser(arg), os.path.expanduser(captions))
    if captions:
        raise ValueError(f"data.captions is only read for imagefolder sources, got data.source={spec!r}")
    src = source_from_spec(spec, split, seed=seed)
    if isinstance(src, ShardSource):  # streamed: the captions come with the samples, in the batches
        return src
    return CaptionedSource(src, src.caption)
