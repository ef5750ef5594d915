"""`fastvit eval zeroshot RUN_DIR|CHECKPOINT [key=value ...]`: zero-shot classification with a CLIP run.

Each class name is put into prompt templates (for the built-in dataset, its caption templates with every pair of
colour names, fastvit/data/builtin.py); the class embedding is the normalised mean of the prompts' text
embeddings. An image is assigned the class of highest cosine similarity with its image
embedding. Class names: the built-in dataset's classes, or an image folder's class sub-folder names
(underscores read as spaces). Prints one JSON object with `top1` (percent; also as `top1_pct`, beside
`chance_pct` and `"unit": "percent"`) and writes it into the run's eval.json; `eval.max_images` reads a
seeded, class-balanced subset (fastvit/eval/subset.py).
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fastvit.config import apply_overrides, read_config
from fastvit.data import source_from_spec
from fastvit.data.builtin import CLASSES, BuiltinSource, class_prompts
from fastvit.eval.features import labelled_batches
from fastvit.eval.subset import class_names_seen, eval_indices
from fastvit.fileio import update_json
from fastvit.train import checkpoint as ckpt

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image showing a {}.", "a {} shape.")


def prompts_of(source):
    """class name -> its prompts: the built-in dataset's own caption words, else the generic TEMPLATES."""
    if isinstance(source, BuiltinSource):
        return class_prompts
    return lambda name: [t.format(name) for t in TEMPLATES]


def class_names(source):
    if isinstance(source, BuiltinSource):
        return list(CLASSES)
    names = getattr(source, "classes", None)
    if not names:
        raise ValueError(
            f"{source.spec}: zero-shot evaluation needs class names (builtin or a folder of class sub-folders)"
        )
    return [n.replace("_", " ") for n in names]


def load_clip(cfg, checkpoint_path):
    """The CLIP student of a DCP checkpoint (CPU) and its tokenizer."""
    from fastvit.tasks.clip.model import build_clip

    model, tok = build_clip(cfg, torch.device("cpu"))
    ckpt.load_module(checkpoint_path, model, "student")
    return model.eval(), tok


@torch.no_grad()
def class_embeddings(model, tok, names, prompts):
    """(n_classes, E): per class, the normalised mean of its prompts' normalised text embeddings."""
    out = []
    for name in names:
        ids, eot = tok.encode_batch(prompts(name))
        out.append(F.normalize(model.encode_text(ids, eot).mean(0), dim=-1))
    return torch.stack(out)


@torch.no_grad()
def zeroshot_predictions(model, tok, source, size, *, batch_size=256, indices=None):
    """(predicted classes (N,), labels (N,)) of zero-shot classification of a labelled source's images."""
    classes_CE = class_embeddings(model, tok, class_names(source), prompts_of(source))
    preds, labels = [], []
    for x, y in labelled_batches(source, size, batch_size, indices):
        preds.append((model.encode_image(x) @ classes_CE.t()).argmax(1))
        labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def zeroshot_accuracy(model, tok, source, size, *, batch_size=256, indices=None):
    """Top-1 (in percent) of zero-shot classification of a labelled source."""
    pred, y = zeroshot_predictions(model, tok, source, size, batch_size=batch_size, indices=indices)
    return 100.0 * float((pred == y).float().mean())


def evaluate_zeroshot(run_dir, cfg, checkpoint):
    if cfg.objective.name != "clip":
        raise ValueError(f"zero-shot evaluation needs a CLIP run, this one trained objective.name={cfg.objective.name}")
    if not cfg.data.val_source:
        raise ValueError("data.val_source is empty: set it to labelled data, e.g. data.val_source=builtin:val")
    model, tok = load_clip(cfg, checkpoint)
    val = source_from_spec(cfg.data.val_source, "val", seed=cfg.train.seed)
    indices, how = eval_indices(val, cfg.eval.max_images, seed=cfg.train.seed, split="val")
    pred, y = zeroshot_predictions(
        model, tok, val, cfg.data.global_crops_size, batch_size=cfg.eval.batch_size, indices=indices
    )
    top1, chance = 100.0 * float((pred == y).float().mean()), 100.0 / len(class_names(val))
    result = {
        "eval": "zeroshot",
        "checkpoint": str(checkpoint),
        "step": ckpt.step_of(checkpoint),
        "top1": top1,
        "top1_pct": top1,
        "chance": chance,
        "chance_pct": chance,
        "unit": "percent",
        "val": {
            "source": cfg.data.val_source,
            "images": int(len(y)),
            "subset": how,
            "classes": class_names_seen(val, y.tolist()),
        },
    }
    update_json(Path(run_dir) / "eval.json", "zeroshot", result)  # atomic: a crash leaves the old file
    return result


def main(argv):
    from fastvit.eval.run import resolve_checkpoint

    if not argv:
        raise ValueError("usage: fastvit eval zeroshot RUN_DIR|CHECKPOINT [key=value ...]")
    run_dir, checkpoint = resolve_checkpoint(argv[0])
    cfg = apply_overrides(read_config(Path(run_dir) / "config.yaml"), argv[1:])
    print(json.dumps(evaluate_zeroshot(run_dir, cfg, checkpoint)))
    return 0
