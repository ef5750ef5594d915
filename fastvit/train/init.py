"""model.init=PATH: a new run starts from released or exported weights instead of random ones.

PATH is a fastvit run or checkpoint folder (its evaluated module: the EMA teacher of Web-DINO), a Web-SSL /
DINOv2 native .pth / .safetensors (a full teacher checkpoint `teacher.backbone.*` + `teacher.dino_head.*` /
`teacher.ibot_head.*`, weight-normed last layers as weight_g / weight_v, or a backbone alone) or a Hugging Face
Dinov2 folder. Student and teacher both start from it, heads included where the file holds heads; without them the
heads keep their fresh initialisation. The backbone must be the recipe's architecture (a ValueError names the first
key that differs); a checkpoint at another resolution has its position embeddings resampled to the recipe's grid
by DINOv2's bicubic interpolation with its offset (interpolate_pos_encoding, scale factor (out + 0.1) / in).
The loop calls init_task once, before wrapping, and only when the run folder has no checkpoint to resume.
"""

from dataclasses import dataclass

import torch

from fastvit.interop.convert import read_model
from fastvit.interop.heads import head_state_from_native
from fastvit.interop.native import check_state
from fastvit.interop.run_checkpoint import is_run, model_state
from fastvit.models.pos_embed import PosEmbedResampler
from fastvit.parallel.meta_init import load_or_defer
from fastvit.tasks import spec_of


@dataclass
class InitWeights:
    """backbone: flat native state; grid: its patch grid; heads: {name: DINOHead state} (may be empty)."""

    backbone: dict
    grid: int
    heads: dict


def read_init(path, heads=None):
    """The weights model.init=PATH names (heads: the attention heads of a native file's backbone, which its
    weights do not say: the recipe's)."""
    if is_run(path):
        got = model_state(path, heads=None)
        return InitWeights(got.backbone, got.vit.grid, got.heads)
    native, vit, kind, state = read_model(path, heads=heads)
    heads = {}
    if kind == "native":
        for name in ("dino_head", "ibot_head"):
            try:
                heads[name] = head_state_from_native(state, name)
            except ValueError:  # a backbone-only file
                pass
    return InitWeights(native, vit.grid, heads)


def resample_pos_embed(state, grid_in, grid_out, offset):
    """state with pos_embed (1, 1 + grid_in^2, D) resampled to grid_out (DINOv2's bicubic with `offset`)."""
    if grid_in == grid_out:
        return state
    pos = state["pos_embed"].float()
    patch = PosEmbedResampler(offset)(pos[:, 1:], (grid_in, grid_in), (grid_out, grid_out))
    return {**state, "pos_embed": torch.cat([pos[:, :1], patch], dim=1).to(state["pos_embed"].dtype)}


def _load(module, name, state, what):
    """Checks `state` against module.<name> and loads it (on a meta start-up, when the rank materialises)."""
    check_state(module.get_submodule(name).state_dict(), state, what=what)
    load_or_defer(module, f"{name}.", state)


def init_task(task, cfg):
    """Loads model.init into the task's student and teacher (before wrapping; on a meta start-up each rank
    copies its shards when it materialises, fastvit.parallel.meta_init); returns a one-line summary."""
    path = cfg.model.init
    try:
        vit = task.backbone_cfg
        weights = read_init(path, heads=vit.heads)
        backbone = resample_pos_embed(weights.backbone, weights.grid, vit.grid, vit.interpolate_offset)
        head_names = list(spec_of(cfg.objective.name).build_heads(cfg))
        loaded = [name for name in head_names if name in weights.heads]
        model = f"recipe's model {cfg.model.name} ({vit.width} wide, {vit.depth} blocks)"
        for module in (task.student, task.teacher):
            if module is None:
                continue
            _load(module, "backbone", backbone, model)
            for name in loaded:
                _load(module, name, weights.heads[name], f"recipe's {name}")
    except ValueError as e:
        raise ValueError(f"model.init={path}: {e}") from None
    notes = [f"heads {', '.join(loaded)} loaded" if loaded else "no heads loaded"]
    fresh = [name for name in head_names if name not in loaded]
    if fresh:
        notes.append(f"new {', '.join(fresh)}")
    if weights.grid != vit.grid:
        notes.append(f"position embeddings resampled from {weights.grid} to {vit.grid} patches a side")
    return f"initialised from {path}: backbone, {'; '.join(notes)}"
