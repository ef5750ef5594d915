"""Every shipped single-GPU recipe fits the GPU it names, at its own batch, checkpointing and precision.

Saved activations are measured, not modelled: torch.autograd.graph.saved_tensors_hooks over bf16 student forwards
of the recipe's model cut to 2 and 4 blocks, at 1 and 2 images (all crops), with the recipe's activation
checkpointing; unique storages, parameters excluded. Bytes = fixed + per block (from depth 2 -> 4) scaled to the
recipe's depth, per image (from 1 -> 2 images, so autocast's per-step weight casts are not counted per image)
scaled to its batch. Drop path is off (an upper bound: it skips a share of the blocks per image). Static memory:
the student's parameters, grads and AdamW states (fp32) and the teacher's parameters. The planner's figure for
the same layout is printed beside it and must agree on the verdict.
"""

import dataclasses

import pytest
import torch

from fastvit.config import load_config
from fastvit.info import GPUS
from fastvit.models.build import backbone_config, build_backbone
from fastvit.parallel.checkpointing import apply_activation_checkpointing
from fastvit.parallel.plan import GB, HBM_USABLE, Layout, evaluate, planned_heads
from fastvit.tasks.web_dino.model import WebDINO

GIB = 2**30
RECIPE_GPU = {"web_dino_vitl_h200": "h200"}  # the shipped recipes that name one GPU


def _saved_bytes(cfg, depth, batch):
    """Bytes of the unique non-parameter storages one bf16 student forward saves for its backward."""
    model_cfg = dataclasses.replace(cfg.model, depth=depth, drop_path=0.0)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = WebDINO(build_backbone(model_cfg), cfg.objective.web_dino)
    model.to_empty(device="cpu")
    model.init_weights()
    apply_activation_checkpointing(model.backbone.blocks, cfg.parallel.activation_checkpointing)
    model.backbone.patch_embed.to(torch.bfloat16)  # CPU autocast leaves the conv's bias fp32 (as a GPU does not)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    d = cfg.data
    g = torch.randn(d.n_global_crops * batch, 3, d.global_crops_size, d.global_crops_size)
    loc = torch.randn(d.n_local_crops * batch, 3, d.local_crops_size, d.local_crops_size)
    n = (d.global_crops_size // cfg.model.patch_size) ** 2
    masks = torch.zeros(g.shape[0], n, dtype=torch.bool)
    masks[:, : n // 4] = True  # an average iBOT share of patches through the iBOT head
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params and s.device.type != "meta":
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(g, loc, masks)
    return sum(saved.values())


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPE_GPU))
def test_recipe_fits_its_gpu(recipe):
    cfg = load_config(recipe, ["data.source=builtin", "data.val_source=builtin:val"])
    assert cfg.train.precision == "bf16"
    s = {(dp, b): _saved_bytes(cfg, dp, b) for dp in (2, 4) for b in (1, 2)}
    per_image = lambda depth: (
        (s[(2, 2)] - s[(2, 1)])
        + (depth - 2)
        / 2
        * (  # noqa: E731
            (s[(4, 2)] - s[(4, 1)]) - (s[(2, 2)] - s[(2, 1)])
        )
    )
    vit = backbone_config(cfg.model)
    acts = per_image(vit.depth) * cfg.train.batch_size
    torch.manual_seed(0)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in WebDINO(build_backbone(cfg.model), cfg.objective.web_dino).parameters())
    static = (4 + 4 + 8 + 4) * n_params  # params, grads, AdamW moments (fp32), teacher
    gpu = GPUS[RECIPE_GPU[recipe]]
    budget = HBM_USABLE * gpu.hbm * GB
    layout = Layout(dp=1, tp=1, pp=1, ac=cfg.parallel.activation_checkpointing)
    planned = evaluate(vit, cfg.data, planned_heads(cfg), layout, cfg.train.batch_size, gpu)["memory"]
    print(
        f"{recipe}: {per_image(vit.depth) / GIB:.3f} GiB saved per image -> {acts / GIB:.1f} GiB at batch "
        f"{cfg.train.batch_size} + {static / GIB:.1f} GiB static = {(acts + static) / GIB:.1f} GiB; planner "
        f"{planned['total'] / GIB:.1f} GiB (activations {planned['activations'] / GIB:.1f}); budget {budget / GIB:.1f}"
    )
    assert acts + static <= budget
    assert planned["total"] <= budget
