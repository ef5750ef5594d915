"""One device mesh for the pipeline, data and tensor parallel axes: ("pp", "dp", "tp"), tp innermost.

tp is innermost so a tensor-parallel group sits on one node's NVLink; pp is outermost so its point-to-point
traffic is the only thing that must cross the slowest links. Sizes come from ParallelConfig (dp=-1: what
the world size leaves after tp * pp) and are validated against the model before anything is built:

    dims = resolve_dims(cfg.parallel, world_size, vit_cfg)      # ValueError naming the bad sizes
    mesh = build_mesh(dims, device_type="cuda")                 # ParallelMesh
    mesh.tp, mesh.dp, mesh.pp                                   # 1-D sub-meshes (DeviceMesh)
"""

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

AXES = ("pp", "dp", "tp")


@dataclass(frozen=True)
class ParallelDims:
    dp: int
    tp: int
    pp: int
    virtual_stages: int = 1  # pipeline stages per pp rank (interleaved schedules use 2 or more)

    @property
    def world(self):
        return self.dp * self.tp * self.pp

    @property
    def n_stages(self):
        return self.pp * self.virtual_stages


def _check_positive(**sizes):
    for name, v in sizes.items():
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"parallel.{name} must be a positive integer, got {v!r}")


def check_model_fits(dims, vit_cfg):
    """ValueError unless tp divides the heads and the MLP hidden size and the stages split the depth evenly."""
    if vit_cfg.heads % dims.tp:
        raise ValueError(f"parallel.tp={dims.tp} does not divide the {vit_cfg.heads} attention heads of {vit_cfg.name}")
    if vit_cfg.mlp_hidden % dims.tp:
        raise ValueError(f"parallel.tp={dims.tp} does not divide the MLP hidden size {vit_cfg.mlp_hidden}")
    if dims.n_stages > vit_cfg.depth or vit_cfg.depth % dims.n_stages:
        raise ValueError(
            f"parallel.pp={dims.pp} x {dims.virtual_stages} virtual stage(s) = {dims.n_stages} pipeline stages "
            f"must divide the depth {vit_cfg.depth} of {vit_cfg.name} into equal stages"
        )


def resolve_dims(cfg_parallel, world_size, vit_cfg=None, virtual_stages=None):
    """ParallelDims from a ParallelConfig for `world_size` ranks; dp=-1 takes what tp * pp leave.
    virtual_stages defaults to cfg_parallel.virtual_stages."""
    tp, pp, dp = cfg_parallel.tp, cfg_parallel.pp, cfg_parallel.dp
    virtual_stages = cfg_parallel.virtual_stages if virtual_stages is None else virtual_stages
    _check_positive(tp=tp, pp=pp, virtual_stages=virtual_stages)
    if dp == -1:
        if world_size % (tp * pp):
            raise ValueError(f"world size {world_size} is not divisible by parallel.tp={tp} x parallel.pp={pp}")
        dp = world_size // (tp * pp)
    _check_positive(dp=dp)
    if dp * tp * pp != world_size:
        raise ValueError(f"parallel.dp={dp} x tp={tp} x pp={pp} = {dp * tp * pp} != world size {world_size}")
    dims = ParallelDims(dp=dp, tp=tp, pp=pp, virtual_stages=virtual_stages)
    if vit_cfg is not None:
        check_model_fits(dims, vit_cfg)
    return dims


@dataclass(frozen=True)
class ParallelMesh:
    """The 3-D DeviceMesh ("pp", "dp", "tp") and the sizes it was built from."""

    mesh: object  # torch.distributed.device_mesh.DeviceMesh
    dims: ParallelDims

    @property
    def tp(self):
        return self.mesh["tp"]

    @property
    def dp(self):
        return self.mesh["dp"]

    @property
    def pp(self):
        return self.mesh["pp"]

    def rank(self, axis):
        """This rank's coordinate along `axis` ("pp", "dp" or "tp")."""
        return self.mesh.get_local_rank(axis)

    @property
    def dp_tp(self):
        """The 2-D ("dp", "tp") mesh FSDP shards over when tp > 1."""
        return self.mesh["dp", "tp"]


def build_mesh(dims, device_type="cpu"):
    """The ParallelMesh of `dims` over the initialised default process group."""
    if not dist.is_initialized():
        raise ValueError("build_mesh needs torch.distributed initialised (torchrun, or fastvit.testing.run_ranks)")
    world = dist.get_world_size()
    if dims.world != world:
        raise ValueError(f"dp={dims.dp} x tp={dims.tp} x pp={dims.pp} = {dims.world} != world size {world}")
    mesh = init_device_mesh(device_type, (dims.pp, dims.dp, dims.tp), mesh_dim_names=AXES)
    return ParallelMesh(mesh, dims)
