"""The model in a fastvit run's checkpoint as plain CPU tensors: the one place that reads a run for export,
model.init and evaluation.

Only the requested module's entries are read from the DCP shards (fastvit.train.checkpoint.load_module: the
files verified against their manifest, the restricted reader, fused qkv / w12 rows in the canonical order
whatever tensor-parallel layout wrote them), never the optimizer state: host memory for the output only.
"""

from dataclasses import dataclass
from pathlib import Path

from fastvit.config import read_config
from fastvit.models.build import build_backbone
from fastvit.tasks import spec_of
from fastvit.train import checkpoint as ckpt

MODULES = ("teacher", "student")


@dataclass
class RunModel:
    """backbone: flat native state (Web-SSL / DINOv2 names); vit: its ViTConfig; heads: {name: DINOHead state}
    (empty unless asked for); which: the module read; cfg: the run's config; checkpoint: the folder read."""

    backbone: dict
    vit: object
    heads: dict
    which: str
    cfg: object
    checkpoint: object


def _materialised(module):
    module.to_empty(device="cpu")  # every entry is overwritten by the checkpoint's
    return module


def model_state(path, which=None, heads=False):
    """The backbone (and with heads=True the objective's DINO / iBOT heads; heads=None: those it has, if any) of
    module `which` ("teacher" or "student"; default: the module the objective's spec evaluates) of a run folder or
    one of its checkpoints/step_<n> folders (its newest intact checkpoint for a run folder)."""
    from fastvit.eval.run import resolve_checkpoint

    run_dir, checkpoint = resolve_checkpoint(path)
    cfg = read_config(run_dir / "config.yaml")
    spec = spec_of(cfg.objective.name)
    which = which or spec.eval_module
    if which not in MODULES:
        raise ValueError(f"which={which!r}: choose one of {MODULES}")
    if which == "teacher" and spec.eval_module != "teacher":
        raise ValueError(f"objective {spec.name} has no EMA teacher; export its student (--which student)")
    head_modules = spec.build_heads(cfg) if heads is not False else {}
    if heads and not head_modules:
        raise ValueError(f"objective {spec.name} has no DINO / iBOT heads to export; drop --heads")
    backbone = _materialised(build_backbone(cfg.model, device="meta"))
    ckpt.load_module(checkpoint, backbone, which, "backbone.")
    head_states = {}
    for name, head in head_modules.items():
        ckpt.load_module(checkpoint, _materialised(head), which, f"{name}.")
        head_states[name] = {k: v.detach() for k, v in head.state_dict().items()}
    state = {k: v.detach() for k, v in backbone.state_dict().items()}
    return RunModel(state, backbone.cfg, head_states, which, cfg, checkpoint)


def is_run(path):
    """Whether `path` is a fastvit run folder or one of its checkpoints/step_<n> folders."""
    path = Path(path)
    return (path / "config.yaml").is_file() or (
        path.name.startswith("step_") and (path.parent.parent / "config.yaml").is_file()
    )


__all__ = ["MODULES", "RunModel", "is_run", "model_state"]
