"""parallelize_vit: TP -> activation checkpointing -> torch.compile -> FSDP2 (or DDP), from outside the model.

    mesh = build_mesh(resolve_dims(cfg.parallel, world, vit_cfg), device.type)
    student = parallelize_vit(student, mesh, cfg.parallel)
    teacher = parallelize_vit(teacher, mesh, cfg.parallel, teacher=True)   # sharded exactly like the student

`model` is a VisionTransformer, a module with a `.backbone` ViT (WebDINO), or a pipeline ViTStage (blocks in a
ModuleDict). The teacher gets the same TP and FSDP layout (so the EMA update is a local foreach over matching
shards, fastvit.objectives.teacher.ema_update_) but no checkpointing and no DDP wrapper (it has no grads).
"""

import contextlib

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from fastvit.parallel.checkpointing import apply_activation_checkpointing
from fastvit.parallel.mesh import check_model_fits
from fastvit.parallel.tp import apply_tp


def vit_of(model):
    return model.backbone if hasattr(model, "backbone") else model


def blocks_of(model):
    """The transformer blocks of a ViT / WebDINO / ViTStage, in order."""
    blocks = vit_of(model).blocks
    return list(blocks.values()) if isinstance(blocks, torch.nn.ModuleDict) else list(blocks)


def _fsdp_kwargs(device_type):
    if device_type == "cuda":  # bf16 compute, fp32 master weights and gradient reduction
        return {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)}
    return {}


def apply_fsdp(model, mesh):
    """fully_shard every block, then the root (embeddings, final norm, heads) over the dp axis."""
    kw = _fsdp_kwargs(mesh.mesh.device_type)
    for block in blocks_of(model):
        fully_shard(block, mesh=mesh.dp, **kw)
    fully_shard(model, mesh=mesh.dp, **kw)
    return model


def _reshard_after_forward(module, args, output):
    module.reshard()


def parallelize_vit(model, mesh, cfg_parallel, *, teacher=False):
    """Parallelises `model` in place over the ParallelMesh `mesh` and returns the module to call (the same
    module, or a DDP wrapper for data_parallel="ddp" with dp > 1 and no tp / pp). With mesh=None (one
    process) only activation checkpointing and compilation apply."""
    if cfg_parallel.data_parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel.data_parallel={cfg_parallel.data_parallel!r}: choose 'ddp' or 'fsdp'")
    dims = mesh.dims if mesh is not None else None
    if dims is not None:
        check_model_fits(dims, vit_of(model).cfg)
    use_ddp = dims is not None and cfg_parallel.data_parallel == "ddp" and dims.dp > 1
    if use_ddp and (dims.tp > 1 or dims.pp > 1):
        raise ValueError(
            f"parallel.data_parallel='ddp' cannot be combined with tp={dims.tp} / pp={dims.pp}; use 'fsdp'"
        )
    blocks = blocks_of(model)
    if dims is not None:
        apply_tp(blocks, mesh.tp, sequence_parallel=cfg_parallel.sequence_parallel)
    if not teacher:
        apply_activation_checkpointing(blocks, cfg_parallel.activation_checkpointing)
    if cfg_parallel.compile:
        for block in blocks:  # one graph per block: a graph break inside one is an error, not a slowdown
            block.compile(fullgraph=True)
    if dims is not None and dims.dp > 1 and not use_ddp:
        apply_fsdp(model, mesh)
        if teacher:  # FSDP2 keeps the root unsharded after forward for the backward, which a teacher never runs
            model.register_forward_hook(_reshard_after_forward)
    if use_ddp and not teacher:
        device_ids = [torch.cuda.current_device()] if mesh.mesh.device_type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, process_group=mesh.dp.get_group())
    return model


def parallelize_pair(student, teacher, mesh, cfg_parallel):
    """(student, teacher) parallelised alike for training; teacher may be None (MAE, CLIP)."""
    student_p = parallelize_vit(student, mesh, cfg_parallel)
    teacher_p = parallelize_vit(teacher, mesh, cfg_parallel, teacher=True) if teacher is not None else None
    return student_p, teacher_p


@contextlib.contextmanager
def gradient_sync(module, enabled):
    """Backwards inside reduce their gradients over the data-parallel ranks (enabled) or keep them local for
    accumulation (DDP's no_sync, FSDP2's set_requires_gradient_sync(False): the unsharded gradients accumulate
    and the next synchronised backward reduce-scatters their sum). A no-op for an unwrapped module."""
    if enabled:
        yield
    elif isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    elif isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    else:
        yield
