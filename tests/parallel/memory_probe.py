"""What a student step really allocates on the CPU, for checking the layout planner (fastvit.parallel.plan).

The CPU allocator's own allocations and frees are read from torch.profiler's memory events
(profile_memory=True), so every tensor counts once, views and shared storages included, whoever keeps it
alive (autograd's saved tensors, checkpoint closures, FSDP's gathered parameters, gloo buffers).

A probe runs one warm-up step (so that the gradients already exist and lazy buffers are made), zeroes the
gradients in place, then traces a second forward + backward:
    saved  bytes live at the end of the forward above the start (what the backward keeps alive; the
           images and the parameters exist before and are not counted)
    peak   the most bytes live above the start at any time during the forward and backward
"""

import torch
import torch.distributed as dist
from parallel_cases import local_bytes
from torch.profiler import ProfilerActivity, profile, record_function

from fastvit.models.vit import build_vit
from fastvit.parallel.checkpointing import apply_activation_checkpointing

WIDTH, DEPTH, HEADS, PATCH = 128, 4, 4, 8
GLOBAL_PX, LOCAL_PX = 32, 16  # 4 x 4 + 1 and 2 x 2 + 1 tokens per crop
N_GLOBAL, N_LOCAL = 2, 8  # crops per image, as in Web-DINO


def probe_vit():
    """The small SwiGLU ViT of the probes (LayerScale, qkv bias, no registers), fp32."""
    return build_vit("vit_s", width=WIDTH, depth=DEPTH, heads=HEADS, img_size=GLOBAL_PX, patch_size=PATCH, mlp="swiglu")


def crops_of(images, seed=0):
    """(crops, masks, tokens): N_GLOBAL global and N_LOCAL local crop batches of `images` images, iBOT masks
    on about 30% of the global crops' patches, and the student tokens of the packed sequence."""
    g = torch.Generator().manual_seed(seed)
    glob = torch.randn(N_GLOBAL * images, 3, GLOBAL_PX, GLOBAL_PX, generator=g)
    loc = torch.randn(N_LOCAL * images, 3, LOCAL_PX, LOCAL_PX, generator=g)
    n_patch = (GLOBAL_PX // PATCH) ** 2
    masks = [torch.rand(glob.shape[0], n_patch, generator=g) < 0.3, None]
    tokens = glob.shape[0] * (1 + n_patch) + loc.shape[0] * (1 + (LOCAL_PX // PATCH) ** 2)
    return [glob, loc], masks, tokens


class AllocTrace:
    """CPU allocator bytes over time inside `with AllocTrace() as tr:`; tr.phase(name) marks a region."""

    def __enter__(self):
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def phase(self, name):
        return record_function(f"probe::{name}")

    def __exit__(self, *exc):
        self._prof.__exit__(*exc)
        events = list(self._prof.profiler.kineto_results.events())
        mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        self._times, self._live, live = [], [], 0
        for t, n in mem:
            live += n
            self._times.append(t)
            self._live.append(live)
        self._phases = {
            e.name()[len("probe::") :]: (e.start_ns(), e.end_ns()) for e in events if e.name().startswith("probe::")
        }
        return False

    def live_at(self, t_ns):
        """Bytes live at time t_ns above the start of the trace."""
        out = 0
        for t, live in zip(self._times, self._live):
            if t > t_ns:
                break
            out = live
        return out

    def end_of(self, name):
        return self.live_at(self._phases[name][1])

    def peak(self):
        return max(self._live, default=0)


def output_loss(outs, weights):
    """A loss of every output token that saves nothing of the model's own: sum of out * fixed weights."""
    return sum((o["cls"] * w["cls"]).sum() + (o["patch"] * w["patch"]).sum() for o, w in zip(outs, weights))


def fixed_weights(model, crops, masks):
    with torch.no_grad():
        outs = model(crops, masks)
    return [{k: torch.randn_like(o[k]) for k in ("cls", "patch")} for o in outs]


TRACES = 3  # traced steps per probe; timing (a collective's buffer freed a little later) can only add bytes, so
# the smallest of several traces is the deterministic footprint


def trace_step(model, crops, masks, traces=TRACES):
    """(saved, peak) bytes of a traced forward + backward of model.forward_crops after a warm-up step (the
    smallest of `traces` traces)."""
    weights = fixed_weights(model, crops, masks)
    output_loss(model(crops, masks), weights).backward()
    runs = []
    for _ in range(traces):
        for p in model.parameters():
            p.grad.zero_()
        if dist.is_initialized():
            dist.barrier()
        with AllocTrace() as tr:
            with tr.phase("forward"):
                loss = output_loss(model(crops, masks), weights)
            with tr.phase("backward"):
                loss.backward()
                del loss
        runs.append((tr.end_of("forward"), tr.peak()))
    return {"saved": min(r[0] for r in runs), "peak": min(r[1] for r in runs)}


def measure_one_process(ac, images):
    """Saved / peak activation bytes of the probe ViT on one process under activation checkpointing `ac`."""
    torch.manual_seed(0)
    model = probe_vit()
    apply_activation_checkpointing(list(model.blocks), ac)
    crops, masks, tokens = crops_of(images)
    return {"tokens": tokens, **trace_step(model, crops, masks)}


def measure_tp(rank, world, acs, images, sequence_parallel=False, traces=TRACES):
    """run_ranks target: {ac: the same probe} for each mode in `acs`, with the blocks tensor-parallel (apply_tp)
    over all `world` ranks (tp=world), with sequence parallel (token shards between the linears) or not; every
    rank runs the same images. Under sequence parallel with full checkpointing some traces (up to 3 of 10 per rank
    here, every one of 5 once on a busy machine) hold one more (T, D) fp32 tensor from the end of the forward into
    the backward (not tracked down; gloo collectives in flight are suspected): pass more `traces` there."""
    from fastvit.config import ParallelConfig
    from fastvit.parallel.mesh import build_mesh, resolve_dims
    from fastvit.parallel.tp import apply_tp

    out = {}
    for ac in acs:
        torch.manual_seed(0)
        model = probe_vit()
        mesh = build_mesh(resolve_dims(ParallelConfig(dp=1, tp=world, pp=1), world, model.cfg))
        apply_tp(list(model.blocks), mesh.tp, sequence_parallel=sequence_parallel)
        apply_activation_checkpointing(list(model.blocks), ac)
        crops, masks, tokens = crops_of(images)
        out[ac] = {"tokens": tokens, **trace_step(model, crops, masks, traces)}
    return out


def measure_fsdp(rank, world, acs, images):
    """run_ranks target: {ac: {tokens, static, peak}} for each mode in `acs`: student and EMA teacher sharded
    with FSDP2 over dp=world ranks (parallelize_vit), AdamW, one warm-up step; then the static bytes held
    (params, grads, AdamW states, teacher: local shards) and the peak above them during a traced teacher
    forward (no grad) + student forward + backward of `images` images per rank."""
    return {ac: _fsdp_step(rank, world, ac, images) for ac in acs}


def _fsdp_step(rank, world, ac, images):
    import copy

    from fastvit.config import ParallelConfig
    from fastvit.parallel.mesh import build_mesh, resolve_dims
    from fastvit.parallel.parallelize import parallelize_vit

    torch.manual_seed(0)
    student = probe_vit()
    teacher = copy.deepcopy(student).requires_grad_(False)
    cfg = ParallelConfig(dp=world, tp=1, pp=1, data_parallel="fsdp", activation_checkpointing=ac)
    mesh = build_mesh(resolve_dims(cfg, world, student.cfg))
    student = parallelize_vit(student, mesh, cfg)
    teacher = parallelize_vit(teacher, mesh, cfg, teacher=True)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, foreach=False)
    crops, masks, tokens = crops_of(images, seed=rank)
    weights = fixed_weights(student, crops, masks)

    def step():
        with torch.no_grad():
            teacher(crops[:1])
        output_loss(student(crops, masks), weights).backward()

    step()
    opt.step()
    opt.zero_grad(set_to_none=False)
    states = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
    static = {
        "params": local_bytes(student.parameters()),
        "grads": local_bytes(p.grad for p in student.parameters()),
        "optim": local_bytes(states),
        "teacher": local_bytes(teacher.parameters()),
    }
    peaks = []
    for _ in range(TRACES):
        opt.zero_grad(set_to_none=False)
        dist.barrier()
        with AllocTrace() as tr:
            step()
        peaks.append(tr.peak())
    return {"tokens": tokens, "static": static, "peak": min(peaks)}
