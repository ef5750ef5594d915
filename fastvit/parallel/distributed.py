"""Process-group start-up for torchrun launches: NCCL for GPU tensors (with gloo beside it for the few host
tensors a library may reduce, e.g. torch.distributed.checkpoint's metadata) on GPUs, gloo on CPUs."""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

GPU_BACKEND = "cpu:gloo,cuda:nccl"  # a backend per device type: NCCL refuses CPU tensors


def init_distributed(timeout_s=1800):
    """Initialises torch.distributed when launched by torchrun; returns (rank, world_size, device).

    timeout_s (parallel.timeout_s): how long a collective waits for the slowest rank before the job fails. A
    process group that is already initialised (tests, notebooks) is used as it is.
    """
    if "RANK" not in os.environ or dist.is_initialized():
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        return rank, world, device
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        dist.init_process_group(GPU_BACKEND, timeout=timedelta(seconds=timeout_s))
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
        device = torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device
