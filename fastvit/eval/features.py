"""Frozen-feature extraction: labelled images -> resize + centre crop + normalise -> backbone features."""

import numpy as np
import torch
import torch.nn.functional as F

from fastvit.data import IMAGENET_MEAN, IMAGENET_STD
from fastvit.data.decode import DecodeError, decode_bytes


def eval_transform(img_HW3, size, crop_ratio=0.875):
    """uint8 (H, W, 3) -> float (3, size, size): shorter side to size / crop_ratio (bicubic, antialiased),
    centre crop, ImageNet mean/std normalisation."""
    x = torch.tensor(np.asarray(img_HW3)).permute(2, 0, 1)[None].float() / 255.0  # copies (may be read-only)
    h, w = x.shape[-2:]
    short = round(size / crop_ratio)
    scale = short / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[0, :, top : top + size, left : left + size]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def labelled_images(source, size, indices=None):
    """Yields (image (3, size, size), label) of the given images (default: all) of a labelled source;
    unreadable files are skipped."""
    for i in range(len(source)) if indices is None else indices:
        try:
            payload, label = source.read(int(i))
            img = decode_bytes(payload) if isinstance(payload, bytes | bytearray) else payload
        except (DecodeError, OSError):
            continue
        if label is None or label < 0:
            raise ValueError(f"{source.spec}: image {i} has no label; kNN / linear evaluation needs labelled data")
        yield eval_transform(img, size), label


def labelled_batches(source, size, batch_size=256, indices=None):
    """Yields (images (b, 3, size, size), labels (b,)) of a labelled source; a ValueError if none is readable."""
    xs, ys, any_image = [], [], False
    for x, y in labelled_images(source, size, indices):
        xs.append(x)
        ys.append(y)
        if len(xs) == batch_size:
            yield torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
            xs, ys, any_image = [], [], True
    if xs:
        yield torch.stack(xs), torch.tensor(ys, dtype=torch.int64)
    elif not any_image:
        raise ValueError(f"{source.spec}: no readable images to evaluate on")


@torch.no_grad()
def extract_features(backbone, source, size, *, mode="cls", batch_size=256, indices=None, device="cpu"):
    """(features (N, D or 2D), labels (N,)) of the given images (default: all) of a labelled source under a
    frozen backbone."""
    backbone.eval()
    feats, labels = [], []
    for x, y in labelled_batches(source, size, batch_size, indices):
        out = backbone(x.to(device))
        f = out["cls"] if mode == "cls" else torch.cat([out["cls"], out["patch"].mean(1)], dim=1)
        feats.append(f.float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
