"""One class list for both sides of an evaluation: labels are matched by class name, never by position.

An image folder numbers its classes by their sorted sub-folder names, so a val folder holding a subset of the
classes (or a train folder with one class emptied) numbers them differently from the other side; comparing the
raw numbers would score the right prediction as wrong. Each side's labels are turned into names (the folder
names, the built-in classes, or the integer itself for shards, whose labels are ids) and both are numbered
through one list: the train side's classes in their order, then the val side's classes the train side lacks
(reported: no prediction can name them, so their images count as misses).
"""

import os

import torch

from fastvit.data.builtin import CLASSES, BuiltinSource
from fastvit.errors import UserError


def label_names(source):
    """The class name of each label id of `source`, or None when its labels are ids without names (shards)."""
    if isinstance(source, BuiltinSource):
        return list(CLASSES)
    names = getattr(source, "classes", None)
    return list(names) if names else None


def check_class_folders(source):
    """UserError when a class folder of an image-folder source cannot be read: listing it would silently drop
    the class (and its images) instead."""
    root = getattr(source, "root", None)
    if root is None:
        return
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        for dirpath, _, _ in os.walk(entry.path, onerror=_raise):
            if not os.access(dirpath, os.R_OK | os.X_OK):
                raise UserError(f"class folder {dirpath} cannot be read; fix its permissions or move it out of {root}")


def _raise(error):
    raise UserError(f"class folder {error.filename} cannot be read ({error.strerror}); fix its permissions") from None


def shared_labels(train_source, train_y, val_source, val_y):
    """(train labels, val labels, val class names the train side lacks): both sides numbered through one list."""
    train_names, val_names = label_names(train_source), label_names(val_source)
    if (train_names is None) != (val_names is None):
        raise UserError(
            f"{train_source.spec} and {val_source.spec}: one side names its classes (class folders) and the other "
            "numbers them (shard labels); evaluate on two sources of the same kind"
        )
    train_keys = _keys(train_names, train_y)
    val_keys = _keys(val_names, val_y)
    order = list(dict.fromkeys(train_keys))
    missing = [k for k in dict.fromkeys(val_keys) if k not in set(order)]
    index = {k: i for i, k in enumerate(order + missing)}

    def numbered(keys):
        return torch.tensor([index[k] for k in keys], dtype=torch.int64)

    return numbered(train_keys), numbered(val_keys), missing


def _keys(names, labels):
    ids = [int(v) for v in labels.tolist()]
    return ids if names is None else [names[i] for i in ids]
