"""Dry runs: one rank of a large job built for real on torch's fake process group, on the meta device.

    fastvit train web_dino_vit7b --dry-run 0/64 parallel.tp=2 parallel.pp=2

runs as rank 0 of a 64-rank job: `fastvit.train.loop.build_training` (the function the loop builds with)
resolves the layout, builds student and teacher on the meta device, splits them into this rank's pipeline
stages and applies parallelize_vit (TP, activation checkpointing, FSDP2); the task makes one synthetic batch
(which checks the pipeline's microbatches); the optimizer's state is created by AdamW's own initialiser on
zero gradients like every trainable shard; the DCP save plan of the step-0 checkpoint is made. Nothing is
allocated beyond metadata and no step runs: the fake backend's collectives do nothing. A layout a real run
refuses raises the same ValueError here.

Bytes per rank, as a GPU run holds them: params / teacher the storage of the (FSDP2-padded) shards, grads one
fp32 tensor like each trainable shard, optim AdamW's exp_avg and exp_avg_sq (and step), fsdp_buffers (with
FSDP over dp > 1) the largest block of this rank gathered twice in bf16 (current + prefetched, FSDP2's GPU
mixed precision) plus its unsharded fp32 gradients before their reduce-scatter, as the planner counts them.
"""

import contextlib
import copy
import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard
from torch.utils._pytree import tree_leaves

GB = 1e9
SHOWN = ("patch_embed.proj.weight", "attn.qkv.weight", "attn.proj.weight", "mlp.w12.weight", "mlp.fc1.weight")
SHOWN_LAST = ("mlp.w3.weight", "mlp.fc2.weight", "backbone.norm.weight", "dino_head.last_layer", "ibot_head.last_layer")
GATHER_BYTES = 2  # bf16: FSDP2's param_dtype on GPUs (fastvit.parallel.parallelize)


def parse_rank(spec):
    """(rank, world) of "RANK/WORLD" (e.g. "3/64"); ValueError otherwise."""
    rank, sep, world = str(spec).partition("/")
    try:
        rank, world = int(rank), int(world)
    except ValueError:
        rank = world = -1
    if not sep or world < 1 or not 0 <= rank < world:
        raise ValueError(f"--dry-run expects RANK/WORLD with 0 <= RANK < WORLD (e.g. 0/64), got {spec!r}")
    return rank, world


@contextlib.contextmanager
def fake_process_group(rank, world):
    """torch.distributed initialised as rank `rank` of `world` on the fake backend (collectives do nothing)."""
    if dist.is_initialized():
        raise ValueError("a dry run needs a process without torch.distributed initialised (not under torchrun)")
    from torch.testing._internal.distributed.fake_pg import FakeStore  # torch's test helper: import it lazily

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()
        _forget_meshes()


def _forget_meshes():
    """Clears DTensor's sharding-propagation and redistribute caches. They key on DeviceMesh, which compares
    equal across process groups (shape and names only), so the next dry run of an equal mesh in this process
    would get specs holding the previous run's meshes and the names of its destroyed process groups."""
    from torch.distributed.tensor import _redistribute
    from torch.distributed.tensor.debug import _clear_sharding_prop_cache

    _clear_sharding_prop_cache()
    _redistribute.clear_redistribute_planner_cache()


def rank_of(dims, pp=0, dp=0, tp=0):
    """Global rank at mesh coordinates (pp, dp, tp) of the ("pp", "dp", "tp") mesh (tp innermost)."""
    return (pp * dims.dp + dp) * dims.tp + tp


def storage_bytes(tensors):
    """Bytes of the distinct storages under `tensors` (DTensors: their local shards, FSDP2's padding included)."""
    seen, total = set(), 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        storage = t.untyped_storage()
        if storage._cdata not in seen:
            seen.add(storage._cdata)
            total += storage.nbytes()
    return total


def tensor_bytes(tensors):
    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def _tp_local_numel(p):
    """Elements of parameter p on one tensor-parallel rank, unsharded over dp (what FSDP2 gathers)."""
    if not isinstance(p, DTensor):
        return p.numel()
    names = p.device_mesh.mesh_dim_names or ()
    split = [p.device_mesh.size(i) for i, pl in enumerate(p.placements) if isinstance(pl, Shard) and names[i] == "tp"]
    return p.numel() // math.prod(split)


def fsdp_buffer_bytes(run):
    """FSDP2's transient bytes at a block's forward / backward: two blocks gathered (bf16) + one block's fp32 grads."""
    from fastvit.parallel.parallelize import blocks_of

    if run.dims.dp == 1 or run.cfg.parallel.data_parallel != "fsdp":
        return 0
    block = max(sum(_tp_local_numel(p) for p in b.parameters()) for b in blocks_of(run.task.student))
    return 2 * GATHER_BYTES * block + 4 * block


def init_optimizer_state(optimizer):
    """Gives every trainable parameter a zero gradient shaped like its shard and creates the optimizer's state
    with the optimizer's own initialiser (AdamW: step, exp_avg, exp_avg_sq, as at the first step), without
    running the update. Returns the gradients."""
    grads = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    for group in optimizer.param_groups:
        optimizer._init_group(group, [], [], [], [], [], [])
    return grads


def save_plan(state, is_coordinator):
    """This rank's DCP SavePlan of `state` (as the loop's dcp.save makes it): (items, bytes written)."""
    from fastvit.train.dcp_sharded import FusedRowsSavePlanner

    planner = FusedRowsSavePlanner()
    planner.set_up_planner(state, None, is_coordinator)
    plan = planner.create_local_plan()
    written = 0
    for item in plan.items:
        if item.tensor_data is not None:
            numel = math.prod(item.tensor_data.chunk.sizes)
            written += numel * item.tensor_data.properties.dtype.itemsize
    return len(plan.items), written


def _shapes(module, names):
    out = []
    for pattern in names:
        for name, p in module.named_parameters():
            if name.endswith(pattern) or f".{pattern}." in f".{name}":
                local = p.to_local() if isinstance(p, DTensor) else p
                where = tuple(p.placements) if isinstance(p, DTensor) else ()
                out.append((name, tuple(p.shape), tuple(local.shape), where))
                break
    return out


def dry_run(cfg, rank, world, *, checkpoint=True):
    """Builds rank `rank` of a `world`-rank run of `cfg` on the meta device; returns its report (a dict).
    checkpoint=False leaves out the DCP save plan (the slowest part; `fastvit plan verify=1` needs only bytes)."""
    from fastvit.parallel.mesh import resolve_dims
    from fastvit.parallel.pp import stage_ids
    from fastvit.train.loop import build_training

    p = cfg.parallel
    dims = resolve_dims(p, world)  # the sizes alone, as the run checks them first
    if p.data_parallel == "ddp" and dims.dp > 1 and dims.tp == dims.pp == 1:
        raise ValueError(
            "a dry run cannot build parallel.data_parallel='ddp' with dp > 1 (DDP cannot wrap meta-device modules; "
            "every rank would hold the whole model); dry-run parallel.data_parallel=fsdp instead"
        )
    with fake_process_group(rank, world):
        run = build_training(cfg, meta=True)
        batch = run.task.synthetic_batch(run.batch_per_rank, torch.device("meta"))
        task, mesh = run.task, run.mesh
        student = list(task.student.parameters())
        report = {
            "rank": rank,
            "world": world,
            "dims": run.dims,
            "coords": {a: mesh.rank(a) if mesh else 0 for a in ("pp", "dp", "tp")},
            "stages": stage_ids(mesh.rank("pp") if mesh else 0, run.dims.pp, run.dims.virtual_stages),
            "batch": {k: tuple(v.shape) for k, v in batch.items() if torch.is_tensor(v)},
            "params": storage_bytes(student),
            "teacher": storage_bytes(task.teacher.parameters()) if task.teacher is not None else 0,
            "fsdp_buffers": fsdp_buffer_bytes(run),
        }
        grads = init_optimizer_state(run.optimizer)
        report["grads"] = tensor_bytes(grads)
        states = [v for s in run.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        report["optim"] = tensor_bytes(states)
        report["shapes"] = _shapes(task.student, SHOWN) + _shapes(task.student, SHOWN_LAST)
        report["startup"] = startup_bytes(cfg, world, report, task.student)
        report["ckpt_stage"] = report["params"] + report["teacher"] + report["optim"]
        if checkpoint:
            state = task.state_dict(run.optimizer)  # what the loop's checkpoint saves
            report["state_bytes"] = tensor_bytes(t for t in tree_leaves(state) if torch.is_tensor(t))
            report["dcp_items"], report["dcp_bytes"] = save_plan(state, rank == 0)
        run.optimizer.zero_grad(set_to_none=True)
    return report


def startup_bytes(cfg, world, report, student):
    """Peak bytes of this rank while student and teacher are built: on the meta path (fastvit.parallel.meta_init)
    its shards of both plus one full fp32 parameter, the largest of the whole model (a pipeline rank draws the
    other stages' init on temporaries too); otherwise (DDP) the whole student and teacher."""
    from fastvit.parallel.meta_init import defers, largest_param_bytes
    from fastvit.train.tasks import build_task

    if world == 1 or defers(cfg.parallel, world):
        whole = student if cfg.parallel.pp == 1 else build_task(cfg, torch.device("meta")).student
        return report["params"] + report["teacher"] + largest_param_bytes(whole)
    from fastvit.models.build import backbone_config
    from fastvit.parallel.plan import Layout, head_params, planned_heads, stage_params

    vit = backbone_config(cfg.model)
    return 8 * stage_params(vit, head_params(vit.width, planned_heads(cfg)), Layout(dp=1, tp=1, pp=1, ac="none"))


def layout_str(cfg, dims):
    p = cfg.parallel
    sp = " sp" if p.sequence_parallel and dims.tp > 1 else ""
    return f"dp={dims.dp} tp={dims.tp} pp={dims.pp} ac={p.activation_checkpointing}{sp}"


def format_report(cfg, r):
    """The lines `fastvit train --dry-run` prints."""
    from fastvit.parallel.meta_init import defers

    c, gb = r["coords"], lambda key: f"{r[key] / GB:.2f}"  # noqa: E731
    lines = [
        f"dry run: rank {r['rank']} of {r['world']} (pp {c['pp']}, dp {c['dp']}, tp {c['tp']}; stage(s) "
        f"{', '.join(map(str, r['stages']))}) of {cfg.objective.name} {cfg.model.name}, layout "
        f"{layout_str(cfg, r['dims'])} {cfg.parallel.data_parallel}, batch {cfg.train.batch_size} "
        f"({r['batch'].get('global_crops', ('?',))[0]} global crops per rank)",
        f"GB on this rank: params {gb('params')}, grads {gb('grads')}, optim {gb('optim')}, teacher {gb('teacher')}, "
        f"fsdp buffers {gb('fsdp_buffers')}",
        f"start-up peak on this rank: {gb('startup')} GB (student and teacher built on meta, each rank materialises "
        f"its shards: {'yes' if defers(cfg.parallel, r['world']) else 'no, the whole model first'}); "
        f"an asynchronous checkpoint stages {gb('ckpt_stage')} GB in host memory",
    ]
    for name, full, local, where in r["shapes"]:
        on = f" as {', '.join(map(str, where))}" if where else ""
        lines.append(f"  {name}: {full} -> local {local}{on}")
    if "dcp_items" in r:
        gathered = r["dcp_bytes"] - r["state_bytes"]
        lines.append(
            f"checkpoint: DCP save plan of {r['dcp_items']} items holding {r['dcp_bytes'] / GB:.2f} GB on this rank "
            f"(before DCP drops the chunks other ranks write too), {gathered / GB:.2f} GB of it gathered at save "
            "time beside the shards (fused qkv / w12 rows are written as the pieces of this rank's shard)"
        )
    return "\n".join(lines)


COMPARED = ("params", "grads", "optim", "teacher", "fsdp_buffers", "startup", "ckpt_stage")  # the planner's columns


def layout_config(cfg, layout):
    """A copy of cfg set to the planner's Layout (dp x tp x pp, activation checkpointing, sp, FSDP or DDP)."""
    cfg = copy.deepcopy(cfg)
    p = cfg.parallel
    p.dp, p.tp, p.pp, p.activation_checkpointing = layout.dp, layout.tp, layout.pp, layout.ac
    p.sequence_parallel, p.data_parallel = layout.sp, "fsdp" if layout.fsdp else "ddp"
    return cfg


def representative_ranks(dims):
    """The ranks whose memory differs: tp rank 0 of dp rank 0 on the first and on the last pipeline stage."""
    return sorted({rank_of(dims, pp=0), rank_of(dims, pp=dims.pp - 1)})


def verify_layout(cfg, layout, planned, tol=0.02):
    """Dry-runs the representative ranks of `layout` and compares the largest of each of their memory columns
    with `planned` (the planner's static_memory). Returns (line, problems): the `verified ...` line and a list of
    the columns that differ by more than tol."""
    from fastvit.parallel.mesh import ParallelDims

    dims = ParallelDims(dp=layout.dp, tp=layout.tp, pp=layout.pp)
    lay_cfg = layout_config(cfg, layout)
    reports = [dry_run(lay_cfg, r, dims.world, checkpoint=False) for r in representative_ranks(dims)]
    built = {k: max(r[k] for r in reports) for k in COMPARED}
    parts = [f"{k} planned {planned[k] / GB:.2f} built {built[k] / GB:.2f}" for k in COMPARED]
    parts[0] += " GB"
    ranks = ", ".join(str(r["rank"]) for r in reports)
    return f"verified {layout}: {', '.join(parts)} (ranks {ranks} of {dims.world})", compare(planned, built, tol)


def compare(planned, built, tol=0.02):
    """The columns (params, grads, optim, teacher, fsdp_buffers) of `planned` more than tol from `built`, each
    as a line naming both values."""
    return [
        f"{k}: planned {planned[k] / GB:.3f} GB, built {built[k] / GB:.3f} GB ({planned[k] / built[k] - 1:+.1%})"
        for k in COMPARED
        if abs(planned[k] - built[k]) > tol * max(built[k], 1)
    ]


def main(cfg, spec):
    """fastvit train ... --dry-run RANK/WORLD: prints the report; 0."""
    rank, world = parse_rank(spec)
    print(format_report(cfg, dry_run(cfg, rank, world)), flush=True)
    return 0


__all__ = ["compare", "dry_run", "fake_process_group", "format_report", "parse_rank", "rank_of", "verify_layout"]
