"""`fastvit eval knn|linear RUN_DIR|CHECKPOINT|MODEL [key=value ...]`: evaluate a run's teacher backbone
(or a randomly initialised one) on frozen features; prints one JSON object and writes eval.json into the run.

MODEL: a Web-SSL / DINOv2 native .pth / .safetensors file or an HF Dinov2 folder, its architecture inferred
as `fastvit convert` infers it, evaluated at its own resolution (data.global_crops_size=... to change it) on the
config defaults' eval sources plus the key=value overrides; nothing is written.

Under torchrun (a saved run or checkpoint): the evaluated backbone is built on the meta device, sharded over
all ranks (FSDP2), each rank reads only its shards of the checkpoint (DCP) and extracts the features of every
world-th image (fastvit.eval.sharded); the features are all-gathered, every rank computes the same score and
rank 0 prints and records it. A MODEL is sharded alike, each rank copying its shards of the file's tensors (a
.pth is memory-mapped; a .safetensors file and an HF conversion are read whole by each rank); rank 0 prints.

Accuracies are percentages (0-100): `top1` (the key scripts read) and the same value as `top1_pct`, with
`"unit": "percent"`. The object also says, per side ("train": what the kNN / probe fits on, "val": what it
scores), the source, how many images were read, how they were chosen (`eval.max_images`: seeded and
class-balanced, fastvit/eval/subset.py) and which classes they hold.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fastvit.config import Config, apply_overrides, read_config, validate_eval
from fastvit.data import source_from_spec
from fastvit.errors import UserError, os_error_message
from fastvit.eval.classes import check_class_folders, shared_labels
from fastvit.eval.features import extract_features
from fastvit.eval.knn import knn_accuracy
from fastvit.eval.linear import linear_probe_accuracy
from fastvit.eval.subset import class_names_seen, eval_indices
from fastvit.fileio import update_json
from fastvit.interop.convert import read_model
from fastvit.interop.native import load_native, normalize_native
from fastvit.interop.run_checkpoint import is_run
from fastvit.models.build import build_backbone
from fastvit.models.vit import VisionTransformer
from fastvit.parallel.distributed import init_distributed
from fastvit.tasks import spec_of
from fastvit.tasks.spec import eval_command
from fastvit.train import checkpoint as ckpt

KINDS = ("knn", "linear")


def is_main_process():
    return not dist.is_initialized() or dist.get_rank() == 0


def run_folder(path):
    """The run folder of a run folder or of one of its checkpoints/step_<n> folders."""
    path = Path(path)
    config = path.parent.parent / "config.yaml" if path.name.startswith("step_") else path / "config.yaml"
    if config.is_symlink():
        raise UserError(f"{config} is a symbolic link; a run folder's files are its own: replace it by the file")
    if (path / "config.yaml").is_file():
        return path
    if path.name.startswith("step_") and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent
    raise ValueError(f"{path} is neither a run folder (with config.yaml) nor a checkpoints/step_<n> folder")


def resolve_checkpoint(path):
    """(run folder, checkpoint folder) of a run folder (its latest intact checkpoint: the ranks of a process group
    split the check) or of one of its checkpoints/step_<n> folders."""
    path, run_dir = Path(path), run_folder(path)
    if run_dir != path:
        return run_dir, path
    latest = ckpt.latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"{path} has no checkpoint yet; train it first (train.steps=0 writes the initial one)")
    return path, latest


def load_teacher_backbone(cfg, checkpoint_path):
    """The backbone of the module that the objective's spec evaluates (eval_module: the EMA teacher where it has
    one, else the student) of a DCP checkpoint."""
    backbone = build_backbone(cfg.model)
    backbone.to_empty(device="cpu")
    backbone.init_weights()
    key = spec_of(cfg.objective.name).eval_module
    return ckpt.load_module(checkpoint_path, backbone, key, "backbone.")


def random_backbone(cfg):
    torch.manual_seed(cfg.train.seed + 1)
    backbone = build_backbone(cfg.model)
    backbone.to_empty(device="cpu")
    backbone.init_weights()
    return backbone


def random_backbone_sharded(cfg, device):
    """random_backbone sharded over every rank (FSDP2), each rank materialising only its shards (on CPUs the
    same values as random_backbone; on GPUs drawn by the device's generator)."""
    from fastvit.parallel.meta_init import build_sharded

    torch.manual_seed(cfg.train.seed + 1)
    factory = lambda: build_backbone(cfg.model)  # noqa: E731
    return build_sharded(factory, VisionTransformer.init_weights, lambda m: _shard_over_ranks(m, device), device)


def eval_source(cfg, spec, split):
    """The labelled source of one evaluation side; UserError when a class folder of it cannot be read."""
    source = source_from_spec(
        spec, split, seed=cfg.train.seed, max_images=cfg.eval.max_images
    )  # shards: only those needed
    check_class_folders(source)
    return source


def split_features(backbone, cfg, spec, split, device="cpu", source=None, extract=extract_features):
    """(features, labels, what was read) of one evaluation side: the eval.max_images subset of `spec`.
    extract: extract_features, or sharded_extract for a backbone sharded over the ranks."""
    e = cfg.eval
    source = source or eval_source(cfg, spec, split)
    indices, how = eval_indices(source, e.max_images, seed=cfg.train.seed, split=split)
    kw = {"mode": e.features, "batch_size": e.batch_size, "indices": indices, "device": device}
    x, y = extract(backbone, source, cfg.data.global_crops_size, **kw)
    info = {"source": spec, "images": int(len(y)), "subset": how, "classes": class_names_seen(source, y.tolist())}
    return x, y, info


def score_with_info(backbone, cfg, kind, device="cpu", extract=extract_features):
    """(top-1 in percent of `kind` evaluation of a backbone (moved to `device`) on the config's eval sources,
    {"train": what the kNN / probe fit on, "val": what it scored}); extract: see split_features."""
    e = cfg.eval
    if not cfg.data.val_source:
        raise ValueError("data.val_source is empty: set it to labelled data, e.g. data.val_source=imagefolder:DIR")
    train_spec = e.train_source or cfg.data.source
    train_src, val_src = eval_source(cfg, train_spec, "train"), eval_source(cfg, cfg.data.val_source, "val")
    if extract is extract_features:
        backbone = backbone.to(device)
    train_x, train_y, train_info = split_features(backbone, cfg, train_spec, "train", device, train_src, extract)
    val_x, val_y, val_info = split_features(backbone, cfg, cfg.data.val_source, "val", device, val_src, extract)
    train_y, val_y, missing = shared_labels(train_src, train_y, val_src, val_y)  # by class name, not position
    if missing:
        val_info["classes_not_in_train"] = missing  # their images count as misses
    if kind == "knn":
        top1 = knn_accuracy(train_x, train_y, val_x, val_y, k=e.knn_k, temperature=e.knn_temperature)
    else:
        top1 = linear_probe_accuracy(
            train_x,
            train_y,
            val_x,
            val_y,
            epochs=e.linear_epochs,
            lr=e.linear_lr,
            batch_size=e.batch_size,
            seed=cfg.train.seed,
        )
    return top1, {"train": train_info, "val": val_info}


def score(backbone, cfg, kind, device="cpu"):
    """Top-1 (in percent, 0-100) of `kind` evaluation of a backbone on the config's eval sources."""
    return score_with_info(backbone, cfg, kind, device)[0]


def evaluate_run(run_dir, cfg, kind, *, checkpoint=None, compare_random_init=False, device="cpu"):
    """Evaluates the run's latest (or the given) checkpoint on the main process; writes and returns the result
    dict: top1 (= top1_pct, percent), unit, and per side (train, val) the images read (without "top1" on the
    other processes)."""
    if kind not in KINDS:
        raise ValueError(f"unknown evaluation {kind!r}; choose one of {KINDS}")
    checkpoint = checkpoint or ckpt.latest_checkpoint(run_dir)
    result = {"eval": kind, "checkpoint": str(checkpoint), "step": ckpt.step_of(checkpoint)}
    if is_main_process():
        top1, sides = score_with_info(load_teacher_backbone(cfg, checkpoint), cfg, kind, device)
        result.update({"top1": top1, "top1_pct": top1, "unit": "percent"})
        if compare_random_init:
            result["top1_random_init"] = result["top1_random_init_pct"] = score(random_backbone(cfg), cfg, kind, device)
        result.update(sides)
        _record(Path(run_dir) / "eval.json", kind, result)
    return result


def _shard_over_ranks(backbone, device):
    """FSDP2 over every rank of the default process group."""
    from fastvit.parallel.mesh import ParallelDims, build_mesh
    from fastvit.parallel.parallelize import apply_fsdp

    return apply_fsdp(backbone, build_mesh(ParallelDims(dp=dist.get_world_size(), tp=1, pp=1), device.type))


def load_sharded_backbone(cfg, checkpoint_path, device):
    """The evaluated module's backbone of a DCP checkpoint, built on meta and sharded over every rank of the
    default process group (FSDP2), each rank reading only its shards."""
    backbone = _shard_over_ranks(build_backbone(cfg.model), device)  # meta
    backbone.to_empty(device=device)
    key = spec_of(cfg.objective.name).eval_module
    return ckpt.load_module(checkpoint_path, backbone, key, "backbone.", sharded=True)


def sharded_extract(backbone, source, size, *, mode, batch_size, indices, device):
    """extract_features of an FSDP2-sharded backbone: each rank every world-th image, gathered on every rank."""
    from fastvit.eval.sharded import sharded_features

    rank, world = dist.get_rank(), dist.get_world_size()
    kw = {"mode": mode, "batch_size": batch_size, "device": device, "dp_rank": rank, "dp": world, "group": None}
    backbone.eval()
    return sharded_features([backbone], backbone, source, size, indices, **kw)


def evaluate_run_sharded(run_dir, cfg, kind, *, checkpoint, device, compare_random_init=False):
    """evaluate_run on every rank of a torchrun job (see the module docstring): the same result dict on every
    rank; rank 0 writes it into eval.json."""
    result = {"eval": kind, "checkpoint": str(checkpoint), "step": ckpt.step_of(checkpoint)}
    backbone = load_sharded_backbone(cfg, checkpoint, device)
    top1, sides = score_with_info(backbone, cfg, kind, device, extract=sharded_extract)
    result.update({"top1": top1, "top1_pct": top1, "unit": "percent", **sides, "ranks": dist.get_world_size()})
    if compare_random_init:
        del backbone
        random = random_backbone_sharded(cfg, device)
        top1 = score_with_info(random, cfg, kind, device, extract=sharded_extract)[0]
        result["top1_random_init"] = result["top1_random_init_pct"] = top1
    if is_main_process():
        _record(Path(run_dir) / "eval.json", kind, result)
    return result


def model_config(overrides):
    """The config `fastvit eval MODEL` evaluates with: the defaults plus the key=value overrides."""
    return apply_overrides(Config(), overrides)


def evaluate_model(path, kind, overrides=(), device="cpu"):
    """Evaluates a native checkpoint file or an HF folder (no run folder) at its resolution (unless
    data.global_crops_size is among the overrides); model.heads=N names the attention heads of a native file
    whose width and depth are no size-table row. Under torchrun the backbone is sharded over the ranks (FSDP2),
    each rank copying its shards of the file's tensors (a .pth is memory-mapped: the tensors taken as they are
    read only the rank's rows) and extracting every world-th image. Returns the result dict (every rank)."""
    cfg = model_config(overrides)
    native, vit, source_kind, _ = read_model(path, heads=cfg.model.heads or None)
    if not any(o.startswith("data.global_crops_size=") for o in overrides):
        cfg.data.global_crops_size = vit.img_size
    validate_eval(cfg)
    sharded = dist.is_initialized() and dist.get_world_size() > 1
    if sharded:
        from fastvit.parallel.meta_init import copy_shards

        backbone = _shard_over_ranks(VisionTransformer(vit, device="meta"), device)
        backbone = copy_shards(backbone.to_empty(device=device), normalize_native(native))
    else:
        backbone = load_native(VisionTransformer(vit), native)
    del native
    extract = sharded_extract if sharded else extract_features
    top1, sides = score_with_info(backbone, cfg, kind, device, extract=extract)
    model = {"path": str(path), "format": source_kind, "width": vit.width, "depth": vit.depth, "img_size": vit.img_size}
    result = {"eval": kind, "model": model, "top1": top1, "top1_pct": top1, "unit": "percent", **sides}
    return {**result, "ranks": dist.get_world_size()} if sharded else result


def _record(path, kind, result):
    """Writes `result` into eval.json (atomically: a crash leaves the old file); a folder the user cannot write
    (read-only, another user's) gets a one-line warning, and the result is still printed."""
    try:
        update_json(path, kind, result)
    except OSError as e:
        if os_error_message(e) is None:
            raise
        print(f"fastvit eval: warning: {path} not updated ({e.strerror})", file=sys.stderr, flush=True)


def main(argv):
    command = eval_command(argv[0]) if argv else None
    if command is not None:  # an objective's own evaluation (ObjectiveSpec.eval_commands), e.g. CLIP's zeroshot
        return command(argv[1:])
    if len(argv) < 2 or argv[0] not in KINDS:
        raise ValueError("usage: fastvit eval knn|linear|zeroshot RUN_DIR|CHECKPOINT|MODEL [key=value ...]")
    kind, target, overrides = argv[0], argv[1], argv[2:]
    if not is_run(target) and (Path(target).is_file() or (Path(target) / "config.json").is_file()):
        _, _, device = init_distributed(model_config(overrides).parallel.timeout_s)  # under torchrun: sharded
        result = evaluate_model(target, kind, overrides, device)
        if is_main_process():
            print(json.dumps(result))
        return 0
    saved = read_config(run_folder(target) / "config.yaml")
    cfg = validate_eval(apply_overrides(copy.deepcopy(saved), overrides))
    conflicts = ckpt.resume_conflicts(saved, cfg)
    if conflicts:
        raise UserError(
            f"{', '.join(conflicts)}: the checkpoint holds the saved model; drop these overrides to evaluate it"
        )
    _, world, device = init_distributed(cfg.parallel.timeout_s)  # under torchrun: every rank its shards
    run_dir, checkpoint = resolve_checkpoint(target)  # with the process group up, the ranks split the check
    if world > 1:
        result = evaluate_run_sharded(run_dir, cfg, kind, checkpoint=checkpoint, device=device)
    else:
        result = evaluate_run(run_dir, cfg, kind, checkpoint=checkpoint, device=device)
    if is_main_process():
        print(json.dumps(result))
    return 0
