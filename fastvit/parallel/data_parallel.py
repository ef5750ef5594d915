"""Data parallelism from outside the model: DDP for small models, FSDP2 (fully_shard per block) for
large ones. The teacher is sharded exactly like the student so the EMA update is a local foreach."""

import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel


def init_distributed():
    """Initialises torch.distributed when launched by torchrun; returns (rank, world_size, device)."""
    if "RANK" not in os.environ or dist.is_initialized():
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        return rank, world, device
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def _blocks(model):
    return list(model.backbone.blocks)


def shard_fsdp(model, device):
    """fully_shard every backbone block, then the whole model (heads and embeddings in the root)."""
    mp = None
    if device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for block in _blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def wrap_data_parallel(student, teacher, mode, device):
    """Returns (student to call, teacher to call). Single process: both unchanged."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return student, teacher
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(student, device_ids=ids, broadcast_buffers=False), teacher
    if mode == "fsdp":
        return shard_fsdp(student, device), shard_fsdp(teacher, device) if teacher is not None else None
    raise ValueError(f"parallel.data_parallel={mode!r}: choose 'ddp' or 'fsdp'")


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model
