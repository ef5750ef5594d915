"""Which images of a labelled source an evaluation reads: all of them, or `eval.max_images` of them drawn
with a seeded generator, class-balanced when the source's labels are known without decoding.

The same rule serves the side the kNN / linear probe fits on and the side it scores: a folder listed class
by class must not lose its last classes to a "first N files" cut. Class-balanced: every class gets
max_images // n_classes images (the remainder goes one each to classes drawn at random; a class with
fewer images gives all of them and its share goes to the others), each class's images drawn without
replacement. Sources whose labels cost a read per image (webdataset shards) get a seeded uniform draw.
"""

import numpy as np

from fastvit.data.builtin import CLASSES, BuiltinSource

_SPLIT_STREAM = {"train": 0, "val": 1}


def known_labels(source):
    """(N,) int64 labels of every image without decoding any, or None when they are not known up front."""
    if isinstance(source, BuiltinSource):
        return np.arange(len(source)) % source.num_classes
    labels = getattr(source, "labels", None)
    if labels is None or len(labels) != len(source):
        return None
    labels = np.asarray(labels, np.int64)
    return None if (labels < 0).all() else labels


def balanced_indices(labels_N, n, rng):
    """n indices (sorted) with classes as equal as the counts allow, each class's picks drawn by rng."""
    classes = np.unique(labels_N[labels_N >= 0])
    pools = {int(c): rng.permutation(np.flatnonzero(labels_N == c)) for c in classes}
    take = dict.fromkeys(pools, 0)
    left = min(n, sum(len(p) for p in pools.values()))
    while left > 0:
        open_classes = [c for c in pools if take[c] < len(pools[c])]
        share = left // len(open_classes)
        if share == 0:  # fewer images left to give than classes still open: one each to randomly drawn classes
            for c in rng.permutation(open_classes)[:left]:
                take[int(c)] += 1
            break
        for c in open_classes:
            extra = min(share, len(pools[c]) - take[c])
            take[c] += extra
            left -= extra
    return np.sort(np.concatenate([pools[c][: take[c]] for c in pools]))


def eval_indices(source, max_images=0, *, seed=0, split="train"):
    """(indices to evaluate on (sorted int64), how they were chosen: "all" | "class-balanced" | "random")."""
    n = len(source)
    if not max_images or max_images >= n:
        return np.arange(n), "all"
    if max_images < 0:
        raise ValueError(f"eval.max_images must be >= 0 (0: all images), got {max_images}")
    rng = np.random.default_rng([seed, _SPLIT_STREAM.get(split, 2)])
    labels = known_labels(source)
    if labels is not None:
        return balanced_indices(labels, max_images, rng), "class-balanced"
    return np.sort(rng.choice(n, size=max_images, replace=False)), "random"


def class_names_seen(source, labels):
    """Sorted class names (or ids, for a source without names) among `labels`."""
    ids = sorted({int(v) for v in labels})
    names = CLASSES if isinstance(source, BuiltinSource) else getattr(source, "classes", None)
    return [names[i] if names and 0 <= i < len(names) else i for i in ids]
