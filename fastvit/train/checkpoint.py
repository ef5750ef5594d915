"""Checkpoints with torch.distributed.checkpoint (DCP): crash-safe, resharded on load.

Layout of a run folder:
    checkpoints/step_<n>/         DCP files of model, teacher, optimizer (+ extra_rank<r>.pt)
    checkpoints/latest            text file naming the newest complete step folder

A checkpoint is written into step_<n>.tmp/ and renamed when every rank has finished, and
`latest` is replaced last (atomically), so a crash at any point leaves the previous one usable.
Per-rank state that must not be merged (RNG states, data sampler position) goes into
extra_rank<r>.pt beside the DCP files.
"""

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp


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


def save_checkpoint(run_dir, step, state, extra, keep=2):
    """Writes `state` (a DCP state dict, same keys on every rank) and this rank's `extra`."""
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
    torch.save(extra, tmp / f"extra_rank{_rank()}.pt")
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


def load_checkpoint(path, state):
    """Loads a DCP checkpoint into `state` in place (resharding as needed); returns this rank's extra
    state, or None when the checkpoint was written by fewer ranks than there are now."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path))
    extra = Path(path) / f"extra_rank{_rank()}.pt"
    return torch.load(extra, weights_only=False) if extra.is_file() else None


def step_of(path):
    return int(Path(path).name.split("_")[1])
