"""Meta-device start-up: build on meta, parallelise, then each rank materialises and initialises only its shards.

    with deferred_init(enabled):           # fastvit.train.loop.build_training, around building the task
        task = build_task(cfg, device)     # build_on_meta(...) returns meta student / teacher and records init
    task.wrap(...)                         # TP -> activation checkpointing -> compile -> FSDP2, on meta
    materialize_deferred(device)           # to_empty (local shards only), then the recorded init, shard by shard

The weights equal a one-process start-up for the same seed: build_on_meta records the torch.nn.init calls the
module's init function makes (on meta they do nothing) and the RNG state before them; materialisation restores
that state and replays the calls in order, each on a full temporary tensor of one parameter (the generator
draws exactly as in one process), keeps this rank's shard (fused qkv / w12 rows in the tp layout,
fastvit.parallel.tp.to_shard_major) and frees the temporary: the start-up peak is the rank's shards plus one
full parameter. The teacher's shards are then copied from the student's (the teacher is a copy of the student;
both are sharded alike). torchtitan starts its models the same way (meta, parallelise, init_weights on the
shards), but initialises the DTensor shards directly, whose values depend on the layout.

Without deferred_init (one process, dry runs, DDP, pipelines) build_on_meta materialises at once, as before.
"""

import contextlib
import copy

import torch
from torch import nn
from torch.distributed.tensor import DTensor

_INIT_FNS = (
    "trunc_normal_",
    "normal_",
    "uniform_",
    "zeros_",
    "ones_",
    "constant_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
    "eye_",
)
_PENDING = None  # list of pending (student, teacher, calls, rng state) while deferred_init is on


@contextlib.contextmanager
def deferred_init(enabled=True):
    """While on, build_on_meta leaves the modules on meta for materialize_deferred."""
    global _PENDING
    outer, _PENDING = _PENDING, ([] if enabled else None)
    try:
        yield
        assert not _PENDING, "deferred modules were never materialised (call materialize_deferred)"
    finally:
        _PENDING = outer


def record_init(module, init_fn):
    """[(parameter name, shape, dtype, nn.init function name, args, kwargs)] of the nn.init calls that
    init_fn(module) makes on the meta module `module`, in order. A call on anything but a parameter, or a
    buffer left uninitialised, is an error: replaying would miss it."""
    names = {id(p): n for n, p in module.named_parameters()}
    calls, real = [], {name: getattr(nn.init, name) for name in _INIT_FNS}

    def recorder(name):
        def record(tensor, *args, **kwargs):
            if id(tensor) not in names:
                raise ValueError(f"nn.init.{name} on a tensor that is not a parameter of {type(module).__name__}")
            calls.append((names[id(tensor)], tuple(tensor.shape), tensor.dtype, name, args, kwargs))
            return tensor

        return record

    try:
        for name in _INIT_FNS:
            setattr(nn.init, name, recorder(name))
        init_fn(module)
    finally:
        for name, fn in real.items():
            setattr(nn.init, name, fn)
    return calls


def _rng_state(device):
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def build_on_meta(factory, device, init_fn):
    """(student, teacher): factory() built on the meta device, initialised by init_fn(student), the teacher a
    copy without grads in eval mode. Inside deferred_init they stay on meta until materialize_deferred;
    otherwise they are materialised on `device` now."""
    with torch.device("meta"):
        student = factory()
    if _PENDING is None:
        student.to_empty(device=device)
        init_fn(student)
        teacher = copy.deepcopy(student)
    else:
        rng = _rng_state(device)
        calls = record_init(student, init_fn)
        teacher = copy.deepcopy(student)
        _PENDING.append((student, teacher, calls, rng))
    teacher.requires_grad_(False).eval()
    return student, teacher


def _shard_of(full, param, name):
    """This rank's local block of the full (model-order) tensor `full` for parameter `param`."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    from fastvit.parallel.tp import _tp_axis, fused_parts, to_shard_major

    if not isinstance(param, DTensor):
        return full
    tp_i, parts = _tp_axis(param), fused_parts(name)
    if tp_i is not None and parts:
        full = to_shard_major(full, parts, param.device_mesh.size(tp_i))
    sizes, offsets = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return full[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))]


@torch.no_grad()
def materialize_deferred(device):
    """Materialises every pair build_on_meta deferred: local shards only, the one-process initial weights."""
    global _PENDING
    pending, _PENDING = _PENDING or [], []
    for student, teacher, calls, (cpu_rng, cuda_rng) in pending:
        student.to_empty(device=device)
        teacher.to_empty(device=device)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
        params = dict(student.named_parameters())
        for name, shape, dtype, fn, args, kwargs in calls:
            full = torch.empty(shape, dtype=dtype, device=device)  # the one temporary of full size
            getattr(nn.init, fn)(full, *args, **kwargs)
            p = params[name]
            local = p.to_local() if isinstance(p, DTensor) else p
            local.copy_(_shard_of(full, p, name))
            del full
        for s, t in zip(student.parameters(), teacher.parameters()):
            (t.to_local() if isinstance(t, DTensor) else t).copy_(s.to_local() if isinstance(s, DTensor) else s)
    # the generator continues from the init's draws, as after a one-process start-up


def defers(cfg_parallel, world):
    """Whether a `world`-rank run starts on meta: FSDP2 / TP layouts without pipeline stages (DDP broadcasts
    whole modules at wrapping; pipeline stages are cut from a materialised model)."""
    p = cfg_parallel
    return world > 1 and p.pp == 1 and (p.data_parallel == "fsdp" or p.tp == world)


def largest_param_bytes(module):
    """Bytes of the largest full parameter of `module`: materialize_deferred's one temporary."""
    return max((p.numel() * p.element_size() for p in module.parameters()), default=0)
