"""Process-group start-up for torchrun launches (NCCL on GPUs, gloo on CPUs)."""

import os

import torch
import torch.distributed as dist


def init_distributed():
    """Initialises torch.distributed when launched by torchrun; returns (rank, world_size, device).

    A process group that is already initialised (tests, notebooks) is used as it is.
    """
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
