"""The layout planner: per-GPU memory and estimated step time of dp/fsdp x tp x pp x activation checkpointing.

    fastvit plan model.name=vit_7b gpus=64 gpu=h200 train.batch_size=3072 [other config keys]

Memory per GPU (bytes), with P the parameters a GPU holds (its pipeline stage's, matrices / tp, all / dp
under FSDP but the tokens of leading dim 1, which FSDP2's dim-0 shards leave whole on one rank): params 4P
(fp32 master), grads 4P (fp32), AdamW m and v 8P, the EMA teacher 4P (sharded like
the student, no grads); with FSDP over dp > 1 also two blocks gathered at a time (the current one and the
prefetched one, bf16 on GPUs, fp32 on CPUs) and one block's unsharded fp32 gradients before their reduce-scatter.
Activations (bf16 on GPUs, fp32 on CPUs; the norms' mean / rstd and attention's log-sum-exp are always fp32),
the peak of the student's forward + backward on the busiest stage, per token (d width, h MLP hidden, H heads):
  saved by a block for its backward: block input, norm1 out, residual sum, norm2 out (4d) and, with
  LayerScale, proj out and w3 out (2d), all replicated over tp; q, k, v, attention out (4d) and the MLP's
  inputs (SwiGLU: w12 out 2h + SwiGLU out h; GELU: 2h), split over tp; fp32 stats 4 + H / tp;
  with sequence parallel (sp, tp > 1) the block input, residual sum, proj and w3 outs and the norms' stats
  are token shards (1/tp), but qkv and w12 (fc1) save the all-gathered full norm1 / norm2 outs (2d), as
  measured (DTensor's ColwiseParallel(input_layouts=Shard(0)) keeps its gathered input for the weight grad);
  a checkpointed block keeps only its input (d, or d / tp under sp); the final norm (last stage, on the
  gathered tokens) keeps d + 2 fp32, a stage that sends to a next one keeps its (gathered) output (d);
  1F1B keeps min(pp, microbatches) microbatches in flight;
  while the last block of the stage runs its backward: its recomputed activations (when it is checkpointed:
  full every block, selective blocks 0, 2, 4, ...) and the gradients in flight at the SwiGLU backward, the
  step's high point (the GPU kernel writes a (2h) gradient from the (h) one: 2h / tp beyond the freed inputs;
  the CPU torch path keeps two more (h) temporaries: 4h / tp; GELU h / tp), less what the final norm freed.
  Not counted: the crops' pixels, the heads (a few masked tokens and CLS rows: under 1%), the no-grad
  teacher forward (transient, never at the same time as the student's backward).
Sequence parallel pads the tokens to a multiple of tp (at most tp - 1 rows, not counted). It cannot train
with drop path (it drops whole images, a rank holds token shards): no sp layouts when model.drop_path > 0.
Step time: FLOPs from vit_forward_flops (student 3x forward, +1 forward of blocks under full checkpointing,
+1/2 selective; teacher 1 forward of the global crops) at an assumed fraction of the table peak, the 1F1B
bubble (pp - 1) / microbatches, tp all-reduces (4 per block and microbatch, 6 with recompute, exposed; under
sp each is an all-gather + a reduce-scatter of the same ring bytes, so the same time)
and FSDP all-gathers / reduce-scatters (assumed hidden behind compute up to its length).
"""

import dataclasses
import itertools
import sys
from dataclasses import dataclass

from fastvit.info import GPUS
from fastvit.models.build import backbone_config
from fastvit.models.flops import vit_forward_flops
from fastvit.parallel.checkpointing import EVERY as CHECKPOINT_EVERY
from fastvit.parallel.checkpointing import MODES as AC_MODES

GB = 1e9
# the GPUs of fastvit.info's table whose memory and links are known
GPU_TABLE = {name: spec for name, spec in GPUS.items() if spec.plannable}
# Fraction of the table peak a ViT step's matmuls reach (one large GEMM reaches ~790 of 989 TFLOP/s on an H200).
ACHIEVABLE = 0.45
HBM_USABLE = 0.9  # leave room for the allocator, NCCL buffers and fragmentation


@dataclass(frozen=True)
class Layout:
    dp: int
    tp: int
    pp: int
    ac: str  # none | selective | full
    fsdp: bool = True
    sp: bool = False  # sequence parallel (parallel.sequence_parallel), only with tp > 1

    def __post_init__(self):
        if self.sp and self.tp == 1:
            raise ValueError(f"sequence parallel (sp=True) needs tp > 1, got tp={self.tp}")

    def __str__(self):
        return f"dp={self.dp} tp={self.tp} pp={self.pp} ac={self.ac}" + (" sp" if self.sp else "")


def planned_heads(cfg):
    """[(hidden, bottleneck, out)] of the objective's heads (its ObjectiveSpec.plan_heads); ValueError for an
    objective the planner does not model."""
    from fastvit.tasks import spec_of

    spec = spec_of(cfg.objective.name)
    if spec.plan_heads is None:
        raise ValueError(
            f"fastvit plan models objectives with an EMA teacher and projection heads (ObjectiveSpec.plan_heads); "
            f"objective.name={cfg.objective.name} declares none: plan with the recipe of one that does"
        )
    return spec.plan_heads(cfg.objective.section)


def head_params(width, heads):
    """Parameters of the heads (each a 3-layer MLP width -> hidden -> hidden -> bottleneck + prototypes)."""
    return sum(width * h + h + h * h + h + h * b + b + o * b for h, b, o in heads)


def block_params(cfg, tp=1):
    """Parameters of one block held by a tp rank: (sharded matrices and their biases) / tp + replicated vectors."""
    d, h = cfg.width, cfg.mlp_hidden
    qkv, proj = 3 * d * d + (3 * d if cfg.qkv_bias else 0), d * d
    mlp = (2 * h * d + 2 * h + d * h) if cfg.mlp == "swiglu" else (h * d + h + d * h)
    replicated = 4 * d + d + d + (2 * d if cfg.layerscale_init is not None else 0)  # norms, proj / w3 bias, LS
    return (qkv + proj + mlp) // tp + replicated


def token_params(cfg):
    """cls token, position embedding, mask token and register tokens: each has a leading dim of 1."""
    d = cfg.width
    return d + (1 + cfg.grid**2) * d + d + cfg.n_registers * d


def embed_params(cfg):
    d, p = cfg.width, cfg.patch_size
    return token_params(cfg) + 3 * p * p * d + d


def stage_params(cfg, n_head, layout):
    """Parameters held by the busiest pipeline stage's tp rank, before FSDP sharding."""
    blocks = cfg.depth // layout.pp * block_params(cfg, layout.tp)
    first = embed_params(cfg) + blocks
    last = blocks + 2 * cfg.width + n_head
    return max(first + (last - blocks if layout.pp == 1 else 0), last)


def gpu_params(cfg, n_head, layout):
    """Parameters one GPU holds: its stage's tp rank's, / dp under FSDP, on the busiest stage. FSDP2 shards dim 0,
    so the tokens (leading dim 1) stay whole on dp rank 0 of the first stage (the other ranks pad to one row)."""
    if not layout.fsdp or layout.dp == 1:
        return stage_params(cfg, n_head, layout)
    blocks = cfg.depth // layout.pp * block_params(cfg, layout.tp)
    tokens = token_params(cfg)
    last = (blocks + 2 * cfg.width + n_head) / layout.dp
    first = (embed_params(cfg) - tokens + blocks) / layout.dp + tokens
    return first + last - blocks / layout.dp if layout.pp == 1 else max(first, last)


def static_memory(cfg, n_head, layout, gpu=True):
    """Bytes per GPU of the params, grads, optimizer states and teacher shards a GPU keeps (FSDP shards over dp)
    and, under FSDP, "fsdp_buffers": its gathered blocks and one block's unsharded gradients (transient)."""
    p = gpu_params(cfg, n_head, layout)
    out = {"params": 4 * p, "grads": 4 * p, "optim": 8 * p, "teacher": 4 * p, "fsdp_buffers": 0.0}
    if layout.fsdp and layout.dp > 1:  # current + prefetched block gathered; one block's grads before reduce-scatter
        block = block_params(cfg, layout.tp)
        out["fsdp_buffers"] = 2 * (2 if gpu else 4) * block + 4 * block
    return out


def largest_param(cfg, heads):
    """Elements of the model's largest parameter: the one full temporary of a meta-device start-up."""
    d, h = cfg.width, cfg.mlp_hidden
    fc_in = 2 * h if cfg.mlp == "swiglu" else h
    head = [n for hid, b, o in heads for n in (hid * d, hid * hid, b * hid, o * b)]
    return max(3 * d * d, fc_in * d, d * h, (1 + cfg.grid**2) * d, *head)


def startup_memory(cfg, heads, layout):
    """Peak bytes per GPU while student and teacher are built. FSDP, TP and pipeline layouts start on the meta
    device (fastvit.parallel.meta_init): the rank's student and teacher shards plus one full fp32 parameter (the
    model's largest); DDP materialises the whole student and its teacher copy first."""
    n_head = head_params(cfg.width, heads)
    if layout.pp > 1 or layout.fsdp or layout.dp == 1:
        return 8 * gpu_params(cfg, n_head, layout) + 4 * largest_param(cfg, heads)
    return 8 * stage_params(cfg, n_head, Layout(dp=1, tp=1, pp=1, ac="none"))


def checked_memory(cfg, heads, layout):
    """static_memory plus "startup" (startup_memory) and "ckpt_stage": the host bytes (pinned on GPUs) an
    asynchronous checkpoint stages per rank, its params, teacher and AdamW moments. Nothing is gathered at save
    or resume (fastvit.train.dcp_sharded), so a blocking save adds only its files' copies (<= 256 MB)."""
    mem = static_memory(cfg, head_params(cfg.width, heads), layout)
    mem["startup"] = startup_memory(cfg, heads, layout)
    mem["ckpt_stage"] = mem["params"] + mem["teacher"] + mem["optim"]
    return mem


STAT_BYTES = 4  # LayerNorm mean / rstd and attention's log-sum-exp are fp32 whatever the activation dtype


def block_saved_bytes(cfg, tp, bytes_per, sp=False):
    """Bytes per token one block saves for its backward, its input included (see the module docstring)."""
    d, h = cfg.width, cfg.mlp_hidden
    layerscale = cfg.layerscale_init is not None
    mlp = 3 * h if cfg.mlp == "swiglu" else 2 * h  # MLP inputs: w12 out (2h) + SwiGLU out (h), or fc1 / GELU outs
    split = (4 * d + mlp) * bytes_per + cfg.heads * STAT_BYTES  # q, k, v, attention out, MLP inputs; lse
    if sp:  # token shards: x, sum (+ proj, w3 outs), norm stats; all-gathered (full): norm1, norm2 outs
        shards = (2 + 2 * layerscale) * d * bytes_per + 4 * STAT_BYTES
        return 2 * d * bytes_per + (shards + split) / tp
    replicated = (4 + 2 * layerscale) * d * bytes_per + 4 * STAT_BYTES  # x, norm1, sum, norm2 (+ proj, w3 outs)
    return replicated + split / tp


def backward_working_bytes(cfg, tp, bytes_per, gpu):
    """Bytes per token of gradients in flight at the MLP backward (the block backward's high point) beyond the
    saved activations this block has freed by then (its w3 out and the MLP output's input)."""
    h = cfg.mlp_hidden
    if cfg.mlp == "swiglu":  # + dy (h) + d[w12 out] (2h), less the freed SwiGLU out (h); CPU: + 2 (h) temporaries
        return (2 * h if gpu else 4 * h) * bytes_per / tp
    return h * bytes_per / tp  # + dy (h) + d[fc1 out] (h), less the freed GELU out (h)


def activation_parts(cfg, tokens, layout, bytes_per=2, gpu=True, in_flight=1):
    """Activation bytes on the busiest stage of one GPU, as a dict: saved (what the forward of `in_flight`
    microbatches of `tokens` student tokens each keeps for the backward), recompute and working (the extra
    of one microbatch's backward at its high point) and peak (their sum)."""
    d, b, blocks = cfg.width, bytes_per, cfg.depth // layout.pp
    every = CHECKPOINT_EVERY[layout.ac]
    n_ckpt = -(-blocks // every) if every else 0  # blocks 0, every, 2 every, ...
    full = block_saved_bytes(cfg, layout.tp, b, layout.sp)
    block_in = d * b / layout.tp if layout.sp else d * b  # what a checkpointed block keeps
    edge = d * b + 2 * STAT_BYTES if layout.pp == 1 else d * b  # final norm input, or the stage output kept
    saved = (blocks - n_ckpt) * full + n_ckpt * block_in + edge
    last_checkpointed = every and (blocks - 1) % every == 0
    recompute = full - block_in if last_checkpointed else 0.0
    working = backward_working_bytes(cfg, layout.tp, b, gpu) - (edge if layout.pp == 1 else 0.0)
    parts = {"saved": in_flight * saved, "recompute": recompute, "working": working}
    parts = {k: tokens * v for k, v in parts.items()}
    return {**parts, "peak": sum(parts.values())}


def activation_bytes(cfg, tokens, layout, bytes_per=2, gpu=True, in_flight=1):
    """Peak activation bytes of the student's forward + backward on the busiest stage of one GPU (tokens: one
    microbatch's student tokens; in_flight: microbatches whose activations are held at once)."""
    return activation_parts(cfg, tokens, layout, bytes_per, gpu, in_flight)["peak"]


def recipe_tokens(cfg, cfg_data):
    """Tokens one image puts through the student (all crops) and the teacher (global crops)."""
    per = lambda res: 1 + cfg.n_registers + (res // cfg.patch_size) ** 2  # noqa: E731
    glob = cfg_data.n_global_crops * per(cfg_data.global_crops_size)
    return glob + cfg_data.n_local_crops * per(cfg_data.local_crops_size), glob


def microbatches(layout, batch_dp):
    """Pipeline microbatches per step: the default of parallel.pp_microbatches (4 x pp), at most one per image."""
    return min(batch_dp, 4 * layout.pp) if layout.pp > 1 else 1


def step_time(cfg, cfg_data, heads, layout, batch, gpu):
    """(seconds, dict of parts) for one step of the global batch on dp * tp * pp GPUs."""
    crops = [(cfg_data.n_global_crops, cfg_data.global_crops_size), (cfg_data.n_local_crops, cfg_data.local_crops_size)]
    hid, bottleneck, _ = heads[0]  # the head of every crop's class token
    n_rows = cfg_data.n_global_crops + cfg_data.n_local_crops
    rows = [(n_rows, [cfg.width, hid, hid, bottleneck])]
    fwd = vit_forward_flops(cfg, crops, rows)
    blocks = fwd["total"] - fwd["patch_embed"] - fwd["heads"]
    teacher = vit_forward_flops(cfg, crops[:1], rows[:1])["total"]
    every = CHECKPOINT_EVERY[layout.ac]
    recompute = (1 / every if every else 0.0) * blocks  # one block in `every` runs its forward twice
    flops = batch * (3 * fwd["total"] + recompute + teacher)
    gpus = layout.dp * layout.tp * layout.pp
    compute = flops / (gpus * gpu.tflops * 1e12 * ACHIEVABLE)
    batch_dp = batch // layout.dp
    m = microbatches(layout, batch_dp)
    bubble = compute * (layout.pp - 1) / m
    student_tok, teacher_tok = recipe_tokens(cfg, cfg_data)
    tp_comm = 0.0
    if layout.tp > 1:  # ring all-reduce of (tokens, d) bf16 activations, 4 (6 with recompute) per block + 2 teacher
        per_tok = 2 * (layout.tp - 1) / layout.tp * cfg.width * 2 / (gpu.nvlink * GB)
        n_ar = (4 + (2 if layout.ac != "none" else 0)) * student_tok + 2 * teacher_tok
        tp_comm = batch_dp * n_ar * per_tok * cfg.depth / layout.pp
    fsdp = 0.0
    if layout.dp > 1:
        p = stage_params(cfg, head_params(cfg.width, heads), layout)
        bw = gpu.nvlink if layout.dp * layout.tp <= gpu.per_node else gpu.net
        moved = (2 + 2 + 2 + 4) if layout.fsdp else 2 * 4  # bf16 gathers: fwd, bwd, teacher; fp32 reduce-scatter
        fsdp = (layout.dp - 1) / layout.dp * p * moved / (bw * GB)
    total = max(compute + bubble + tp_comm, fsdp)
    return total, {"compute": compute, "bubble": bubble, "tp_comm": tp_comm, "fsdp_comm": fsdp}


def candidates(cfg, gpus, batch, sequence_parallel=True):
    """The dp x tp x pp x ac layouts of `gpus` GPUs that divide the model and the batch; with tp > 1 also their
    sequence-parallel variants when `sequence_parallel` (False when training with drop path)."""
    for tp, pp in itertools.product((1, 2, 4, 8), (1, 2, 4, 8)):
        if gpus % (tp * pp) or cfg.heads % tp or cfg.mlp_hidden % tp or cfg.depth % pp:
            continue
        dp = gpus // (tp * pp)
        if batch % dp:
            continue
        for sp, ac in itertools.product((False, True) if tp > 1 and sequence_parallel else (False,), AC_MODES):
            yield Layout(dp=dp, tp=tp, pp=pp, ac=ac, sp=sp)


def evaluate(cfg, cfg_data, heads, layout, batch, gpu):
    n_head = head_params(cfg.width, heads)
    mem = static_memory(cfg, n_head, layout)
    batch_dp = batch // layout.dp
    m = microbatches(layout, batch_dp)
    tokens = recipe_tokens(cfg, cfg_data)[0] * batch_dp / m  # one microbatch
    in_flight = min(layout.pp, m)  # 1F1B: up to pp microbatches in flight on the first stage
    mem["activations"] = activation_bytes(cfg, tokens, layout, in_flight=in_flight)
    mem["total"] = sum(mem.values())
    seconds, parts = step_time(cfg, cfg_data, heads, layout, batch, gpu)
    checked = checked_memory(cfg, heads, layout)
    mem["startup"], mem["ckpt_stage"] = checked["startup"], checked["ckpt_stage"]  # not part of the step's total
    return {"layout": layout, "memory": mem, "seconds": seconds, "parts": parts}


def plan(cfg, gpus, gpu_name, batch):
    """All candidate layouts evaluated, fastest first among those that fit, then the rest (at equal time: fewer
    tp x pp GPUs, then without sequence parallel). No sequence-parallel layouts when cfg.model.drop_path > 0."""
    if gpu_name not in GPU_TABLE:
        raise ValueError(f"gpu={gpu_name!r}: choose one of {sorted(GPU_TABLE)}")
    gpu = GPU_TABLE[gpu_name]
    vit = backbone_config(cfg.model)
    layouts, heads = candidates(vit, gpus, batch, sequence_parallel=cfg.model.drop_path == 0), planned_heads(cfg)
    rows = [evaluate(vit, cfg.data, heads, lay, batch, gpu) for lay in layouts]
    if not rows:
        raise ValueError(f"no dp x tp x pp layout of {gpus} GPUs divides batch {batch} and fits {vit.name}")
    budget = HBM_USABLE * gpu.hbm * GB
    for r in rows:
        r["fits"] = r["memory"]["total"] <= budget
    key = lambda r: (not r["fits"], r["seconds"], r["layout"].tp * r["layout"].pp, r["layout"].sp)  # noqa: E731
    return vit, sorted(rows, key=key)


def format_plan(vit, rows, gpus, gpu_name, batch, top=12, drop_path=0.0):
    """The plan's table (the first `top` rows), its recommendation and why; drop_path: model.drop_path (> 0: the
    sp layouts were left out, which the why line says)."""
    gb = lambda x: f"{x / GB:7.1f}"  # noqa: E731
    lines = [
        f"plan: {vit.name} ({vit.width}x{vit.depth}, {vit.heads} heads) on {gpus} x {gpu_name}, batch {batch}; "
        f"GB per GPU, step time at {ACHIEVABLE:.0%} of {GPU_TABLE[gpu_name].tflops:.0f} TFLOP/s",
        f"{'layout':<34} {'params':>7} {'grads':>7} {'optim':>7} {'teacher':>7} {'fsdp':>7} {'activ':>7} {'total':>7} "
        f"{'fits':>4} {'step s':>7} {'bubble':>6} {'tp comm':>7} {'startup':>7} {'ckpt':>5}",
    ]
    for r in rows[:top]:
        m = r["memory"]
        lines.append(
            f"{str(r['layout']):<34} {gb(m['params'])} {gb(m['grads'])} {gb(m['optim'])} {gb(m['teacher'])} "
            f"{gb(m['fsdp_buffers'])} {gb(m['activations'])} {gb(m['total'])} {'yes' if r['fits'] else 'no':>4} "
            f"{r['seconds']:7.2f} "
            f"{r['parts']['bubble']:6.2f} {r['parts']['tp_comm']:7.2f} {gb(m['startup'])} {m['ckpt_stage'] / GB:5.1f}"
        )
    best = rows[0]
    if not best["fits"]:
        lines.append("no layout fits in memory; lower train.batch_size or add GPUs")
        return "\n".join(lines)
    total = gb(best["memory"]["total"]).strip()
    lines.append(f"recommended: {best['layout']}, ~{best['seconds']:.2f} s/step, {total} GB per GPU")
    lines.append(_why(best, rows, drop_path))
    return "\n".join(lines)


def _find(rows, layout):
    return next((r for r in rows if r["layout"] == layout), None)


def _why(best, rows, drop_path=0.0):
    lay = best["layout"]
    fits = [r for r in rows if r["fits"]]
    reasons = [f"fastest of the {len(fits)} layouts that fit in {HBM_USABLE:.0%} of memory"]
    if lay.tp == 1 and lay.pp == 1:
        reasons.append("FSDP alone shards params, grads, optimizer and teacher enough: no tp all-reduce, no bubble")
    else:
        flat = [r for r in fits if r["layout"].tp == 1 and r["layout"].pp == 1]
        if flat:
            f = flat[0]
            axes = " / ".join(f"{k}={v}" for k, v in (("tp", lay.tp), ("pp", lay.pp)) if v > 1)
            costs = [f"a {best['parts']['bubble']:.2f} s bubble"] if lay.pp > 1 else []
            costs += [f"{best['parts']['tp_comm']:.2f} s of tp communication"] if lay.tp > 1 else []
            reasons.append(
                f"the best pure-FSDP layout ({f['layout']}) takes {f['seconds']:.2f} s: {axes} cut the activations "
                f"per GPU to {best['memory']['activations'] / GB:.0f} GB, which buys ac={lay.ac} for "
                + " and ".join(costs)
            )
    if lay.sp:
        no_sp = _find(rows, dataclasses.replace(lay, sp=False))
        if no_sp:
            reasons.append(
                f"sequence parallel keeps the norms' and residuals' activations at 1/{lay.tp}: "
                f"{best['memory']['total'] / GB:.0f} GB per GPU instead of {no_sp['memory']['total'] / GB:.0f} GB "
                "(it needs model.drop_path=0)"
            )
    if lay.ac != "none":
        no_ac = _find(rows, dataclasses.replace(lay, ac="none"))
        if no_ac and not no_ac["fits"]:
            need = no_ac["memory"]["total"] / GB
            reasons.append(f"without activation checkpointing this layout needs {need:.0f} GB per GPU")
    if drop_path > 0 and any(r["layout"].tp > 1 for r in rows):
        reasons.append(
            f"no sequence-parallel (sp) layouts: model.drop_path={drop_path} drops whole images, which tp ranks' "
            "token shards do not hold"
        )
    return "why: " + "; ".join(reasons)


def main(argv):
    """fastvit plan [key=value ...] with gpus=N gpu=h100|h200|a100 besides the config keys; prints the plan."""
    from fastvit.config import load_config

    gpus, gpu_name, verify, overrides = 8, "h100", False, []
    for item in argv:
        key, _, value = item.partition("=")
        if key == "gpus":
            if not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"gpus={value} is out of range: give the number of GPUs, 1 or more (e.g. gpus=8)")
            gpus = int(value)
        elif key == "gpu":
            gpu_name = value.lower()
        elif key == "verify":
            verify = value.lower() in ("1", "true", "yes")
        else:
            overrides.append(item)
    cfg = load_config("", overrides)
    try:
        vit, rows = plan(cfg, gpus, gpu_name, cfg.train.batch_size)
    except ValueError as e:
        print(f"fastvit plan: {e}", file=sys.stderr)
        return 2
    print(format_plan(vit, rows, gpus, gpu_name, cfg.train.batch_size, drop_path=cfg.model.drop_path), flush=True)
    return verify_rows(cfg, vit, rows) if verify else 0


def verify_rows(cfg, vit, rows, top=3, tol=0.02):
    """verify=1: the recommended layout and the next top - 1 built on fake process groups (fastvit.parallel.dry_run);
    prints one `verified` line each; 1 when a static memory column is off by more than tol, else 0."""
    from fastvit.parallel.dry_run import verify_layout

    failed = []
    for r in rows[:top]:
        line, problems = verify_layout(cfg, r["layout"], checked_memory(vit, planned_heads(cfg), r["layout"]), tol)
        print(line, flush=True)
        failed += [f"{r['layout']} {p}" for p in problems]
    for p in failed:
        print(f"fastvit plan: verify: {p}, more than {tol:.0%} apart", file=sys.stderr)
    return 1 if failed else 0


__all__ = [
    "GPU_TABLE",
    "Layout",
    "activation_bytes",
    "activation_parts",
    "candidates",
    "checked_memory",
    "format_plan",
    "main",
    "plan",
    "static_memory",
    "step_time",
]
