"""Meta-device start-up: build on meta, parallelise, then each rank materialises and initialises only its shards.

    with deferred_init(enabled):           # fastvit.train.loop.build_training, around building the task
        task = build_task(cfg, device)     # build_on_meta(...) returns meta student / teacher and records init
    task.wrap(...)                         # TP -> activation checkpointing -> compile -> FSDP2, on meta
    materialize_deferred()                 # to_empty (local shards only), then the recorded init, shard by shard

The weights equal a one-process start-up for the same seed: build_on_meta records the torch.nn.init calls the
module's init function makes (on meta they do nothing) and the RNG state before them; materialisation restores
that state and replays the calls in order, each on a full temporary tensor of one parameter (the generator
draws exactly as in one process), keeps this rank's shard (fused qkv / w12 rows in the tp layout,
fastvit.parallel.tp.to_shard_major) and frees the temporary: the start-up peak is the rank's shards plus one
full parameter. The teacher's shards are then copied from the student's (the teacher is a copy of the student;
both are sharded alike). torchtitan starts its models the same way (meta, parallelise, init_weights on the
shards), but initialises the DTensor shards directly, whose values depend on the layout.

Pipelines cut a rank's stages out of the meta model and parallelise them; their task's wrap then calls
materialize_stages with those stage modules (parameters under the whole model's names) before it merges them:
only they are materialised, and the other stages' calls still draw on a temporary (the generator has no cheap
skip-ahead), so the rank's parameters get the one-process values.

model.init (fastvit.train.init) hands its full tensors to load_or_defer: on a deferred pair they are kept and
each rank copies its shard of them after the replayed init (which still draws, so the generator ends where a
one-process start-up leaves it and the fresh parameters, e.g. new heads, get the one-process values).

Without deferred_init (one process, dry runs, DDP) build_on_meta materialises at once, as before.
"""

import contextlib
import copy
from dataclasses import dataclass, field, replace

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
_NO_DRAW = ("zeros_", "ones_", "constant_", "eye_")  # draw nothing: skipped for another stage's parameters
_PENDING = None  # list of _Deferred while deferred_init is on


@dataclass(frozen=True)
class _Deferred:
    """A student / teacher pair built on meta, waiting for materialisation."""

    students: tuple  # modules to materialise: the whole student, or this rank's pipeline stages of it
    teachers: tuple  # the teacher's modules, alike
    calls: list  # record_init's calls on the whole student
    rng: tuple  # (CPU, CUDA or None) generator states before the init
    device: torch.device
    loaded: dict = field(default_factory=dict)  # model.init: {parameter name: full tensor} set after the init


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
        _PENDING.append(_Deferred((student,), (teacher,), calls, rng, device))
    teacher.requires_grad_(False).eval()
    return student, teacher


def build_sharded(factory, init_fn, shard_fn, device):
    """factory() built on the meta device, sharded in place by shard_fn(module) (FSDP2), then materialised on
    `device` with the values init_fn(module) gives it in one process from the current RNG state, each rank its
    shards (one full parameter at a time): the random initialisation `fastvit eval` compares with under
    torchrun."""
    with torch.device("meta"):
        module = factory()
    rng, calls = _rng_state(device), record_init(module, init_fn)
    shard_fn(module)
    _materialize(_Deferred((module,), (), calls, rng, device))
    return module


@torch.no_grad()
def copy_shards(module, state):
    """Sets each parameter of the sharded, materialised `module` to its rank's block of the full tensor
    state[name]; only that block is read (from a memory-mapped file: only its pages)."""
    params = dict(module.named_parameters())
    if params.keys() != state.keys():
        raise ValueError(f"state and module differ in {sorted(params.keys() ^ state.keys())[:4]}")
    for name, p in params.items():
        _local(p).copy_(_shard_of(state[name], p, name))
    return module


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


def materialize_deferred():
    """Materialises every pair build_on_meta deferred: local shards only, the one-process initial weights."""
    global _PENDING
    pending, _PENDING = _PENDING or [], []
    for d in pending:
        _materialize(d)
    # the generator continues from the init's draws, as after a one-process start-up


def materialize_stages(student, students, teachers):
    """Pipelines: materialises now, of the pair deferred for the whole meta `student`, only the modules `students`
    and `teachers` (this rank's stages of student and teacher, parameters under the whole model's names); the
    other stages stay on meta. Does nothing when `student` is not deferred (one process, dry runs)."""
    mine = [d for d in _PENDING or [] if d.students[0] is student]
    for d in mine:
        _PENDING.remove(d)
        _materialize(replace(d, students=tuple(students), teachers=tuple(teachers)))


@torch.no_grad()
def _materialize(d):
    for m in (*d.students, *d.teachers):
        m.to_empty(device=d.device)
    cpu_rng, cuda_rng = d.rng
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, d.device)
    params = _named_parameters(d.students)
    for name, shape, dtype, fn, args, kwargs in d.calls:
        p = params.get(name)
        if p is None and fn in _NO_DRAW:
            continue
        full = torch.empty(shape, dtype=dtype, device=d.device)  # the one temporary of full size
        getattr(nn.init, fn)(full, *args, **kwargs)
        if p is not None:  # else another pipeline stage's: drawn only to move the generator on
            _local(p).copy_(_shard_of(full, p, name))
        del full
    for name, value in d.loaded.items():
        if name in params:  # else another pipeline stage's
            _local(params[name]).copy_(_shard_of(value, params[name], name))
    if not d.teachers:  # build_sharded: a module without a teacher
        return
    teacher = _named_parameters(d.teachers)
    assert teacher.keys() == params.keys(), sorted(teacher.keys() ^ params.keys())
    for name, t in teacher.items():
        _local(t).copy_(_local(params[name]))


@torch.no_grad()
def load_or_defer(module, prefix, state):
    """Sets the parameters `prefix + key` of `module` (a student or teacher build_on_meta made) to the full
    tensors of `state` (model.init): now when the module is materialised, else when it is (materialize_*)."""
    pending = [d for d in _PENDING or [] if module is d.students[0] or module is d.teachers[0]]
    if pending:  # the teacher is the student's copy: one dict for both
        names = {name for name, _ in module.named_parameters()}
        assert all(prefix + key in names for key in state), f"only parameters load on meta, not {sorted(state)[:4]}"
        pending[0].loaded.update((prefix + key, value) for key, value in state.items())
        return
    for key, value in module.get_submodule(prefix.rstrip(".")).state_dict().items():
        value.copy_(state[key])


def _named_parameters(modules):
    return {n: p for m in modules for n, p in m.named_parameters()}


def _local(p):
    return p.to_local() if isinstance(p, DTensor) else p


def defers(cfg_parallel, world):
    """Whether a `world`-rank run starts on meta: FSDP2, TP and pipeline layouts, all but DDP (which broadcasts
    whole modules at wrapping; it wraps only dp > 1 without tp or pp)."""
    p = cfg_parallel
    return world > 1 and (p.pp > 1 or p.data_parallel == "fsdp" or p.tp == world)


def largest_param_bytes(module):
    """Bytes of the largest full parameter of `module`: materialize_deferred's one temporary."""
    return max((p.numel() * p.element_size() for p in module.parameters()), default=0)
