"""Shared pieces of the export / init / eval-any-model tests: tiny trained runs and the features `fastvit eval`
computes on a few labelled images."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from tiny import tiny_config  # noqa: E402

from fastvit.config import read_config  # noqa: E402
from fastvit.data import source_from_spec  # noqa: E402
from fastvit.eval.features import extract_features, labelled_batches  # noqa: E402
from fastvit.eval.run import load_teacher_backbone, resolve_checkpoint  # noqa: E402
from fastvit.train.loop import train  # noqa: E402

STEPS = ("train.steps=2", "train.checkpoint_every=0", "optim.warmup_steps=1")
N_IMAGES = 12


def train_tiny(out, *extra):
    """A tiny Web-DINO run trained 2 steps on the CPU; its folder."""
    train(tiny_config(out, *STEPS, *extra))
    return Path(out)


def eval_images(size=32):
    """The first N_IMAGES eval images at `size` (fastvit eval's transform) as one batch."""
    source = source_from_spec("builtin:val", "val")
    x, _ = next(labelled_batches(source, size, N_IMAGES, list(range(N_IMAGES))))
    return x


def eval_features(run):
    """The CLS features `fastvit eval` computes for the eval images with the run's evaluated module."""
    run_dir, checkpoint = resolve_checkpoint(run)
    cfg = read_config(run_dir / "config.yaml")
    backbone = load_teacher_backbone(cfg, checkpoint)
    source = source_from_spec("builtin:val", "val")
    feats, _ = extract_features(backbone, source, cfg.data.global_crops_size, indices=list(range(N_IMAGES)))
    return feats


def hf_features(folder, x):
    """pooler_output (the final-norm CLS token) of an HF folder loaded by transformers' AutoModel."""
    import transformers

    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(pixel_values=x).pooler_output, model
