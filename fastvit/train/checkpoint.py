"""Checkpoints with torch.distributed.checkpoint (DCP): crash-safe, resharded on load.

Layout of a run folder:
    checkpoints/step_<n>/         DCP files of model, teacher, optimizer (+ extra_rank<r>.pt)
    checkpoints/latest            text file naming the newest complete step folder

A checkpoint is written into step_<n>.tmp/ and renamed when every rank has finished, and
`latest` is replaced last (atomically), so a crash at any point leaves the previous one usable.
State that must not be merged (RNG states, data sampler position) goes into extra_rank<r>.pt
beside the DCP files, one per data-parallel rank r (tensor-parallel ranks share their group's).
"""

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)


def _rank():
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def checkpoint_dir(run_dir):
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir):
    """Path of the newest complete checkpoint of a run folder, or None."""
    pointer = checkpoint_dir(run_dir) / "latest"
    if not pointer.is_file():
        return None
    path = checkpoint_dir(run_dir) / pointer.read_text().strip()
    if not path.is_dir():
        raise ValueError(f"{pointer} names {path.name}, which does not exist; delete the pointer to start afresh")
    return path


def save_checkpoint(run_dir, step, state, extra, keep=2, extra_rank=None):
    """Writes `state` (a DCP state dict, same keys on every rank) and, on ranks given an extra_rank
    (default: the global rank), `extra` as extra_rank<extra_rank>.pt."""
    root = checkpoint_dir(run_dir)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    with warnings.catch_warnings():  # DCP warns that a single process saves without a process group
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=str(tmp))
    extra_rank = _rank() if extra_rank is None else extra_rank
    if extra_rank >= 0:
        torch.save(extra, tmp / f"extra_rank{extra_rank}.pt")
    _barrier()
    if _rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer_tmp = root / "latest.tmp"
        pointer_tmp.write_text(final.name + "\n")
        os.replace(pointer_tmp, root / "latest")
        _prune(root, keep)
    _barrier()
    return final


def _prune(root, keep):
    steps = sorted((int(p.name.split("_")[1]), p) for p in root.glob("step_*") if p.name.split("_")[1].isdigit())
    for _, path in steps[: max(len(steps) - keep, 0)]:
        shutil.rmtree(path, ignore_errors=True)


# Optimizer state and param-group settings keyed by parameter name, not by group index: the groups a rank
# holds (and their order) depend on which blocks it holds, so index keys would collide across layouts.
OPTIM_BY_NAME = StateDictOptions(flatten_optimizer_state_dict=True)


def trainable_state(model, optimizer, *, with_optim=None):
    """{"student": model state, "optim": optimizer state} as DCP state dicts (DDP unwrapped, FSDP2 shards kept).

    The optimizer is left out while it has no state (before its first step) unless with_optim=True:
    torch fills an empty optimizer's state by running a dummy step, which would advance Adam's step count
    and make a run's trajectory depend on whether it wrote a step-0 checkpoint.
    """
    if with_optim or (with_optim is None and optimizer.state):
        model_sd, optim_sd = get_state_dict(model, optimizer, options=OPTIM_BY_NAME)
        return {"student": model_sd, "optim": optim_sd}
    return {"student": get_model_state_dict(model)}


def load_trainable_state(model, optimizer, state):
    """Applies what trainable_state(..., with_optim=True) held after load_checkpoint filled it."""
    if "optim" in state:
        set_state_dict(
            model, optimizer, model_state_dict=state["student"], optim_state_dict=state["optim"], options=OPTIM_BY_NAME
        )
    else:
        set_model_state_dict(model, state["student"])


def load_checkpoint(path, state, extra_rank=None):
    """Loads a DCP checkpoint into `state` in place (resharding as needed). Top-level entries the
    checkpoint does not hold (the optimizer of a step-0 checkpoint) are dropped from `state`.
    Returns this rank's extra state, or None when the checkpoint was written by fewer ranks."""
    saved = {key.split(".", 1)[0] for key in dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata}
    for key in [k for k in state if k not in saved]:
        del state[key]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    extra = Path(path) / f"extra_rank{_rank() if extra_rank is None else extra_rank}.pt"
    return torch.load(extra, weights_only=False) if extra.is_file() else None


def load_module(path, module, key, prefix=""):
    """Loads the entries `key`.`prefix`<name> of a checkpoint into `module` in place (plain tensors, this process
    alone, even inside a distributed run), e.g. load_module(path, backbone, "teacher", "backbone.") for the EMA
    teacher's ViT."""
    from fastvit.parallel.tp import canonical_state  # checkpoints keep fused qkv / w12 rows canonical

    state = {key: {prefix + name: t for name, t in module.state_dict().items()}}  # tensors share the storage
    canon, finish = canonical_state(state)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(canon, checkpoint_id=str(path), no_dist=True)
    finish()
    return module


def step_of(path):
    return int(Path(path).name.split("_")[1])
