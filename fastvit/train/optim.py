"""AdamW with parameter groups, and the per-step lr / weight-decay schedule applied to them.

Groups: no weight decay on biases, norms, LayerScale, position embedding and tokens; a learning
rate multiplier for the patch embedding; optional layer-wise lr decay (block i of a depth-L
backbone gets decay ** (L + 1 - (i + 1))); the heads' last layer can be frozen for the first steps.
"""

import torch

from fastvit.objectives.teacher import cosine_schedule

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "register_tokens", "gamma")


def _no_weight_decay(name, param):
    return param.ndim <= 1 or name.endswith(".bias") or any(key in name for key in _NO_DECAY_NAMES)


def _layer_id(name, depth):
    """0 for the embeddings, i + 1 for block i, depth + 1 for everything after the blocks."""
    parts = name.split(".")
    if "blocks" in parts:
        return int(parts[parts.index("blocks") + 1]) + 1
    if any(key in name for key in ("patch_embed", "pos_embed", "cls_token", "mask_token", "register_tokens")):
        return 0
    return depth + 1


def param_groups(named_params, depth, cfg_optim):
    """Parameter groups keyed by (weight decay on?, lr multiplier, is last layer)."""
    groups = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        lr_mult = cfg_optim.layer_decay ** (depth + 1 - _layer_id(name, depth))
        if "patch_embed" in name:
            lr_mult *= cfg_optim.patch_embed_lr_mult
        wd = not _no_weight_decay(name, p)
        last_layer = "last_layer" in name
        key = (wd, round(lr_mult, 8), last_layer)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "apply_wd": wd, "lr_mult": lr_mult, "last_layer": last_layer}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_optimizer(named_params, depth, cfg_optim):
    groups = param_groups(named_params, depth, cfg_optim)
    # fused AdamW is fastest on GPUs; foreach on CPUs. DTensor (FSDP2) parameters work with both.
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg_optim.lr, betas=cfg_optim.betas, weight_decay=0.0, fused=fused)


def schedule_values(step, total_steps, cfg_optim):
    """(lr, weight decay) at `step` for the recipe's cosine schedules with linear warmup."""
    warmup = min(cfg_optim.warmup_steps, total_steps)  # a run shorter than the warmup never leaves it
    lr = cosine_schedule(step, total_steps, cfg_optim.lr, cfg_optim.min_lr, warmup_steps=warmup)
    wd = cosine_schedule(step, total_steps, cfg_optim.weight_decay, cfg_optim.weight_decay_end)
    return lr, wd


def apply_schedule(optimizer, step, total_steps, cfg_optim):
    """Sets every group's lr and weight decay for `step`; returns (lr, wd) of the base group."""
    lr, wd = schedule_values(step, total_steps, cfg_optim)
    frozen = step < cfg_optim.freeze_last_layer_steps
    for g in optimizer.param_groups:
        g["lr"] = 0.0 if (g["last_layer"] and frozen) else lr * g["lr_mult"]
        g["weight_decay"] = wd if g["apply_wd"] else 0.0
    return lr, wd
