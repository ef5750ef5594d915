"""`fastvit bench kernels [op=attention|layer_norm|swiglu|mae_loss|dino_loss|clip_loss|all] [out=DIR] [quick=1]`.

On a GPU: times forward, backward and both for every available backend of each op plus a
torch.compile'd reference, on ViT shapes (ViT-L / g / 7B widths, 257 and 50 tokens, ~64K tokens
per batch), with triton.testing.do_bench; reports TFLOP/s (attention) or GB/s (norms, SwiGLU)
and the speed ratio to the eager torch reference. On a CPU: the Triton kernels' max error
against float64 through the interpreter on a small shape, and the eager timings of the torch
reference and of the fastvit torch backend (never a Triton timing). Prints a table and writes
kernels.json and one PNG bar chart per op into `out`. On a GPU each op's rows end with the registers,
spills and shared memory of every kernel binary it ran (compiled_rows).

Ops are a registry (REGISTRY: name -> bench function(ctx) -> list of row dicts), so other
benchmarks can be added with register(name, fn).
"""

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REGISTRY = {}


def register(name, fn):
    """Adds a benchmark: fn(ctx: Ctx) -> list of row dicts (see _row)."""
    REGISTRY[name] = fn
    return fn


@dataclass
class Ctx:
    device: torch.device
    quick: bool
    interpreted: bool  # the Triton kernels run through the interpreter (CPU correctness only)

    @property
    def gpu(self):
        return self.device.type == "cuda"

    def time_ms(self, fn):
        if self.gpu:
            import triton.testing

            return triton.testing.do_bench(fn, warmup=10 if self.quick else 25, rep=40 if self.quick else 100)
        fn()
        times, start = [], time.perf_counter()
        while len(times) < 3 or (len(times) < 20 and time.perf_counter() - start < 0.2):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return min(times)  # the CPU is shared: the fastest run is the least disturbed one


def _row(op, case, dtype, backend, pass_, ms=None, work=None, unit="", ref_ms=None, **extra):
    """One table line: work is FLOPs (unit TFLOP/s) or bytes (unit GB/s) of the pass."""
    value = None if ms is None or work is None else work / (ms * 1e-3) / (1e12 if unit == "TFLOP/s" else 1e9)
    vs_ref = None if ms is None or ref_ms is None else ref_ms / ms
    return dict(
        op=op,
        case=case,
        dtype=str(dtype).replace("torch.", ""),
        backend=backend,
        pass_=pass_,
        ms=ms,
        value=value,
        unit=unit,
        vs_ref=vs_ref,
        **extra,
    )


def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _time_passes(ctx, fwd, inputs):
    """ms of the forward, the backward alone (graph kept) and forward + backward."""
    outs = _as_list(fwd())
    grads = [torch.randn_like(o) for o in outs]
    bwd = lambda: torch.autograd.grad(outs, inputs, grads, retain_graph=True)
    both = lambda: torch.autograd.grad(_as_list(fwd()), inputs, grads)
    with torch.no_grad():
        ms_fwd = ctx.time_ms(fwd)
    return {"fwd": ms_fwd, "bwd": ctx.time_ms(bwd), "fwd+bwd": ctx.time_ms(both)}


def _bench_backends(ctx, op, case, dtype, inputs, reference, fastvit_fn, backends, work, unit):
    """Rows for the eager reference, torch.compile(reference) (GPU) and each fastvit backend."""
    variants = {"reference": reference}
    if ctx.gpu:
        variants["torch.compile"] = torch.compile(reference, dynamic=False)
    variants.update({b: (lambda b=b: fastvit_fn(b)) for b in backends})
    ref_ms = _time_passes(ctx, lambda: reference(), inputs)
    rows = []
    for name, fn in variants.items():
        try:
            ms = ref_ms if name == "reference" else _time_passes(ctx, lambda fn=fn: fn(), inputs)
        except Exception as e:  # one backend failing must not hide the others' numbers
            rows.append(_row(op, case, dtype, name, "all", error=f"{type(e).__name__}: {e}"[:200]))
            continue
        rows += [_row(op, case, dtype, name, p, ms[p], work[p], unit, ref_ms[p]) for p in ms]
    return rows


def _max_errors(actual, expected, names):
    return {n: (a.double() - e.double()).abs().max().item() for n, a, e in zip(names, actual, expected)}


def _fwd_bwd(fn, inputs, grads):
    leaves = [t.detach().requires_grad_() for t in inputs]
    outs = _as_list(fn(*leaves))
    return outs + list(torch.autograd.grad(outs, leaves, grads[: len(outs)]))


def _correctness(ctx, op, case, fn, ref, inputs64, names, dtype=torch.float32):
    """Max abs error of the Triton backend (inputs in `dtype`) against the float64 reference, for each output and
    gradient."""
    if not (ctx.gpu or ctx.interpreted):
        return [_row(op, case, dtype, "triton", "check", error="Triton interpreter unavailable")]
    dev = ctx.device
    n_out = len(_as_list(ref(*inputs64)))
    grads64 = [torch.randn_like(o) for o in _as_list(ref(*inputs64))]
    expected = _fwd_bwd(ref, inputs64, grads64)
    actual = _fwd_bwd(fn, [t.to(dev, dtype) for t in inputs64], [g.to(dev, dtype) for g in grads64[:n_out]])
    return [_row(op, case, dtype, "triton", "check", max_abs_err=_max_errors(actual, expected, names))]


def _parse(argv):
    args = {"op": "all", "out": "bench_out/kernels", "quick": "0"}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key not in args:
            raise ValueError(f"bench kernels: expected op=..., out=... or quick=..., got {a!r}")
        args[key] = value
    ops = list(REGISTRY) if args["op"] == "all" else args["op"].split(",")
    unknown = [o for o in ops if o not in REGISTRY]
    if unknown:
        raise ValueError(f"bench kernels: unknown op {unknown}; choose from {sorted(REGISTRY)} or all")
    return ops, Path(args["out"]), args["quick"] not in ("0", "false", "")


def _use_interpreter():
    """Without a GPU, run the Triton kernels through the interpreter (only possible before they are imported)."""
    if torch.cuda.is_available():
        return False
    if not any(m.startswith("fastvit.kernels.") for m in sys.modules):
        os.environ["TRITON_INTERPRET"] = "1"
    from fastvit.kernels import attention

    return attention.INTERPRETED


def main(argv: list[str]) -> int:
    try:
        ops, out_dir, quick = _parse(argv)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    ctx = Ctx(torch.device("cuda" if torch.cuda.is_available() else "cpu"), quick, _use_interpreter())
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "device": _device_name(ctx),
        "mode": "gpu" if ctx.gpu else "cpu",
        "quick": quick,
        "torch": torch.__version__,
        "seconds": 0.0,
        "rows": [],
    }
    by_op = {}
    for op in ops:  # the JSON is rewritten after every op, so a run cut short keeps what it measured
        by_op[op] = REGISTRY[op](ctx)
        by_op[op] += compiled_rows(ctx, op)
        report["rows"] += by_op[op]
        report["seconds"] = round(time.perf_counter() - t0, 1)
        (out_dir / "kernels.json").write_text(json.dumps(report, indent=1))
    rows = report["rows"]
    print(format_table(rows))
    for op in ops:
        _plot(op, [r for r in by_op[op] if r.get("value")], out_dir / f"kernels_{op}.png")
    print(f"wrote {out_dir / 'kernels.json'} and kernels_<op>.png ({report['seconds']} s)")
    return 0


# bench op -> the kernel modules it launches (fastvit.kernels.<module>)
KERNEL_MODULES = {
    "attention": ["attention"],
    "layer_norm": ["layer_norm"],
    "swiglu": ["swiglu"],
    "dino_loss": ["prototype_cross_entropy", "sinkhorn"],
    "clip_loss": ["clip_loss"],
    "mae_loss": ["mae_loss"],
}


def compiled_rows(ctx, op):
    """On a GPU, one row per kernel binary the op's benchmark compiled: registers, spills (from the driver) and
    shared memory (from the compiled metadata), beside the timings. The CPU runs the interpreter: no binaries (the
    ahead-of-time check, python -m fastvit.kernels.aot, reports them without a GPU)."""
    if not ctx.gpu:
        return []
    import triton

    rows = []
    for module in KERNEL_MODULES.get(op, []):
        try:
            mod = importlib.import_module(f"fastvit.kernels.{module}")
        except ImportError:
            continue
        for fn in vars(mod).values():
            if not isinstance(fn, triton.runtime.jit.JITFunction):
                continue
            for kernel_cache, *_ in list(fn.device_caches.values()):
                for compiled in kernel_cache.values():
                    rows.append(_compiled_row(op, fn, compiled))
    return rows


def _compiled_row(op, fn, compiled):
    compiled._init_handles()  # loads the binary: the driver reports registers and spills
    meta = compiled.metadata
    constants = getattr(getattr(compiled, "src", None), "constants", {}) or {}
    blocks = "x".join(str(v) for k, v in sorted(constants.items()) if isinstance(v, int) and not isinstance(v, bool))
    case = f"{fn.__name__} {blocks} w{meta.num_warps}s{meta.num_stages}"
    return _row(
        op,
        case,
        "",
        "triton",
        "compiled",
        registers=compiled.n_regs,
        spills=compiled.n_spills,
        shared_bytes=int(meta.shared),
    )


def _device_name(ctx):
    return torch.cuda.get_device_name(ctx.device) if ctx.gpu else f"cpu ({torch.get_num_threads()} threads)"


def format_table(rows):
    head = f"{'op':<15}{'case':<30}{'dtype':<9}{'backend':<14}{'pass':<9}{'ms':>10}{'throughput':>20}{'vs ref':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "registers" in r:
            detail = f"{r['registers']} registers, {r['spills']} spills, {r['shared_bytes']} B shared"
            lines.append(f"{r['op']:<15}{r['case']:<48}{r['backend']:<14}{r['pass_']:<9}  {detail}")
            continue
        if "max_abs_err" in r or "error" in r:
            detail = r.get("error") or ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_err"].items())
            lines.append(f"{r['op']:<15}{r['case']:<30}{r['dtype']:<9}{r['backend']:<14}{r['pass_']:<9}  {detail}")
            continue
        thr = f"{r['value']:.3g} {r['unit']}" if r["value"] is not None else ""
        ratio = f"{r['vs_ref']:.2f}x" if r["vs_ref"] is not None else ""
        lines.append(
            f"{r['op']:<15}{r['case']:<30}{r['dtype']:<9}{r['backend']:<14}{r['pass_']:<9}"
            f"{r['ms']:>10.3f}{thr:>20}{ratio:>8}"
        )
    return "\n".join(lines)


def _plot(op, rows, path):
    """Horizontal bar chart of throughput, one bar per (case, backend, pass), drawn with Pillow."""
    from PIL import Image, ImageDraw

    rows = rows or [{**_row(op, "no timed rows", "", "", ""), "value": 0.0}]
    bar_h, label_w, bar_w = 16, 470, 420
    img = Image.new("RGB", (label_w + bar_w + 150, 40 + bar_h * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 8), f"fastvit bench kernels: {op} ({rows[0].get('unit') or 'no data'})", fill="black")
    top = max((r["value"] or 0.0) for r in rows) or 1.0
    colors = {"reference": (120, 120, 120), "torch.compile": (230, 150, 40), "torch": (70, 130, 200)}
    for i, r in enumerate(rows):
        y = 32 + i * bar_h
        draw.text((8, y + 2), f"{r['op']} {r['case']} {r['dtype']} {r['backend']} {r['pass_']}"[:75], fill="black")
        w = int(bar_w * (r["value"] or 0.0) / top)
        draw.rectangle(
            [label_w, y + 2, label_w + max(w, 1), y + bar_h - 2], fill=colors.get(r["backend"], (60, 170, 90))
        )
        ratio = f" ({r['vs_ref']:.2f}x)" if r.get("vs_ref") else ""
        draw.text((label_w + w + 6, y + 2), f"{(r['value'] or 0.0):.1f}{ratio}", fill="black")
    img.save(path)


# ---- the ops --------------------------------------------------------------------------------------------

# name -> (width, heads); head dims 64, 64, 128
VIT_WIDTHS = {"vit_l": (1024, 16), "vit_g": (1536, 24), "vit_7b": (4096, 32)}


def _backends(ctx, module):
    """fastvit backends to time: all available ones on a GPU; on a CPU only "torch" (the interpreter is not timed)."""
    found = importlib.import_module(module).available(ctx.device)
    return found if ctx.gpu else [b for b in found if b == "torch"]


def _shapes(ctx):
    """[(label, width, heads, tokens per sequence)] timed on this device."""
    if not ctx.gpu:
        return [("cpu_vit_s", 384, 6, 197)]
    names = ["vit_l", "vit_7b"] if ctx.quick else list(VIT_WIDTHS)
    return [(name, *VIT_WIDTHS[name], n) for name in names for n in ((257,) if ctx.quick else (257, 50))]


def _total_tokens(ctx):
    return (16384 if ctx.quick else 65536) if ctx.gpu else 4 * 197


def _dtype(ctx):
    return torch.bfloat16 if ctx.gpu else torch.float32


def bench_attention(ctx):
    from fastvit.kernels.attention import attention_ref

    from fastvit.ops import attention

    cu = torch.tensor([0, 257, 307], dtype=torch.int32, device=ctx.device)
    check_dt = _dtype(ctx)  # fp32 on a CPU; bf16 on a GPU, where the Triton kernels take fp16 / bf16 only
    rows = _correctness(
        ctx,
        "attention",
        "dense 1x2x197x64",
        lambda q, k, v: attention(q, k, v, backend="triton"),
        attention_ref,
        [torch.randn(1, 2, 197, 64, dtype=torch.float64) for _ in range(3)],
        ["out", "dq", "dk", "dv"],
        check_dt,
    )
    rows += _correctness(
        ctx,
        "attention",
        "packed 257+50 x1x80",
        lambda q, k, v: attention(q, k, v, cu_seqlens=cu, max_seqlen=257, backend="triton"),
        lambda q, k, v: attention_ref(q, k, v, None, cu.cpu()),
        [torch.randn(307, 1, 80, dtype=torch.float64) for _ in range(3)],
        ["out", "dq", "dk", "dv"],
        check_dt,
    )
    backends, dt = _backends(ctx, "fastvit.ops.attention"), _dtype(ctx)
    for label, width, heads, n in _shapes(ctx):
        rows += _attention_case(ctx, label, width, heads, n, backends, dt)
    for name in (["vit_l"] if ctx.quick else list(VIT_WIDTHS)) if ctx.gpu else []:
        rows += _multicrop_case(ctx, name, backends, dt)
    return rows


def _attention_flops(heads, D, lengths_and_counts):
    fwd = sum(4 * count * heads * n * n * D for n, count in lengths_and_counts)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}  # backward: 5 of the 7 matmuls


def _attention_case(ctx, label, width, heads, n, backends, dt):
    """Dense (B, H, n, D) attention in the model's layout (q, k, v views of (B, n, H, D) memory)."""
    from fastvit.ops import attention

    B, D = max(_total_tokens(ctx) // n, 1), width // heads
    q, k, v = (
        torch.randn(B, n, heads, D, device=ctx.device, dtype=dt).transpose(1, 2).requires_grad_() for _ in range(3)
    )
    return _bench_backends(
        ctx,
        "attention",
        f"{label} {B}x{heads}x{n}x{D}",
        dt,
        [q, k, v],
        lambda: F.scaled_dot_product_attention(q, k, v),
        lambda b: attention(q, k, v, backend=b),
        backends,
        _attention_flops(heads, D, [(n, B)]),
        "TFLOP/s",
    )


def _multicrop_case(ctx, name, backends, dt):
    """The packed multi-crop student batch (2 x 257 + 8 x 50 tokens per image) in one launch, against
    one SDPA call per resolution (the reference) and two dense fastvit triton calls."""
    from fastvit.ops import attention

    width, heads = VIT_WIDTHS[name]
    D, imgs = width // heads, max(_total_tokens(ctx) // (2 * 257 + 8 * 50), 1)
    G, L = 2 * imgs, 8 * imgs  # global and local crops
    cu = torch.tensor(
        [0, *range(257, G * 257 + 1, 257), *range(G * 257 + 50, G * 257 + L * 50 + 1, 50)],
        dtype=torch.int32,
        device=ctx.device,
    )
    q, k, v = (
        torch.randn(G * 257 + L * 50, heads, D, device=ctx.device, dtype=dt, requires_grad=True) for _ in range(3)
    )

    def per_resolution(fn):
        split = lambda t: (
            t[: G * 257].view(G, 257, heads, D).transpose(1, 2),
            t[G * 257 :].view(L, 50, heads, D).transpose(1, 2),
        )
        return [fn(*parts) for parts in zip(split(q), split(k), split(v))]

    def fastvit_fn(b):
        if b == "triton per-resolution":
            return per_resolution(lambda *t: attention(*t, backend="triton"))
        return attention(q, k, v, cu_seqlens=cu, max_seqlen=257, backend=b)

    variants = backends + ["triton per-resolution"] * ("triton" in backends)
    return _bench_backends(
        ctx,
        "attention",
        f"{name} multicrop {imgs}img x{heads}x{D}",
        dt,
        [q, k, v],
        lambda: per_resolution(F.scaled_dot_product_attention),
        fastvit_fn,
        variants,
        _attention_flops(heads, D, [(257, G), (50, L)]),
        "TFLOP/s",
    )


def bench_layer_norm(ctx):
    from fastvit.kernels.layer_norm import add_layer_norm_ref, layer_norm_ref

    from fastvit.ops import add_layer_norm, layer_norm

    x64, r64, w64, b64 = (torch.randn(s, dtype=torch.float64) for s in ((8, 1023), (8, 1023), (1023,), (1023,)))
    rows = _correctness(
        ctx,
        "layer_norm",
        "8x1023",
        lambda x, w, b: layer_norm(x, w, b, backend="triton"),
        lambda x, w, b: layer_norm_ref(x, w, b, 1e-6),
        [x64, w64, b64],
        ["y", "dx", "dw", "db"],
    )
    rows += _correctness(
        ctx,
        "add_layer_norm",
        "8x1023",
        lambda x, r, w, b: add_layer_norm(x, r, w, b, backend="triton"),
        lambda x, r, w, b: add_layer_norm_ref(x, r, w, b, 1e-6),
        [x64, r64, w64, b64],
        ["y", "s", "dx", "dr", "dw", "db"],
    )
    backends, dt = _backends(ctx, "fastvit.ops.layer_norm"), _dtype(ctx)
    for label, width, _, _ in {shape[1]: shape for shape in _shapes(ctx)}.values():
        rows += _layer_norm_case(ctx, label, width, backends, dt)
    return rows


def _layer_norm_case(ctx, label, width, backends, dt):
    from fastvit.kernels.layer_norm import add_layer_norm_ref

    from fastvit.ops import add_layer_norm, layer_norm

    M = _total_tokens(ctx)
    x, r = (torch.randn(M, width, device=ctx.device, dtype=dt, requires_grad=True) for _ in range(2))
    w, b = (torch.randn(width, device=ctx.device, dtype=dt, requires_grad=True) for _ in range(2))
    nbytes = M * width * x.element_size()  # one (M, width) tensor; the ideal traffic counts whole tensors
    rows = _bench_backends(
        ctx,
        "layer_norm",
        f"{label} {M}x{width}",
        dt,
        [x, w, b],
        lambda: F.layer_norm(x, (width,), w, b, 1e-6),
        lambda be: layer_norm(x, w, b, backend=be),
        backends,
        {"fwd": 2 * nbytes, "bwd": 3 * nbytes, "fwd+bwd": 5 * nbytes},
        "GB/s",
    )
    return rows + _bench_backends(
        ctx,
        "add_layer_norm",
        f"{label} {M}x{width}",
        dt,
        [x, r, w, b],
        lambda: add_layer_norm_ref(x, r, w, b, 1e-6),
        lambda be: add_layer_norm(x, r, w, b, backend=be),
        backends,
        {"fwd": 4 * nbytes, "bwd": 4 * nbytes, "fwd+bwd": 8 * nbytes},
        "GB/s",
    )


def bench_swiglu(ctx):
    from fastvit.kernels.swiglu import swiglu_ref

    from fastvit.ops import swiglu

    rows = _correctness(
        ctx,
        "swiglu",
        "8x2x341",
        lambda x: swiglu(x, backend="triton"),
        swiglu_ref,
        [torch.randn(8, 2 * 341, dtype=torch.float64)],
        ["y", "dx"],
    )
    backends, dt = _backends(ctx, "fastvit.ops.swiglu"), _dtype(ctx)
    for label, width, _, _ in {shape[1]: shape for shape in _shapes(ctx)}.values():
        rows += _swiglu_case(ctx, label, width, backends, dt)
    return rows


def _swiglu_case(ctx, label, width, backends, dt):
    from fastvit.kernels.swiglu import swiglu_ref

    from fastvit.ops import swiglu

    M, h = _total_tokens(ctx), round(width * 8 / 3 / 64) * 64  # h: the SwiGLU hidden width of a ViT this wide
    x = torch.randn(M, 2 * h, device=ctx.device, dtype=dt, requires_grad=True)
    nbytes = M * h * x.element_size()
    return _bench_backends(
        ctx,
        "swiglu",
        f"{label} {M}x2x{h}",
        dt,
        [x],
        lambda: swiglu_ref(x),
        lambda be: swiglu(x, backend=be),
        backends,
        {"fwd": 3 * nbytes, "bwd": 5 * nbytes, "fwd+bwd": 8 * nbytes},
        "GB/s",
    )


def bench_mae_loss(ctx):
    """The Web-MAE pixel loss (patchify + per-patch normalisation + masked MSE and its gradient) at ViT-L/14 224 px
    shapes (256 patches of 588 values, 75% masked), against the patchify-then-MSE reference."""
    from fastvit.kernels.mae_loss import mae_loss_ref

    from fastvit.ops import mae_loss

    p = 14
    img64, mask64 = torch.randn(2, 3, 56, 56, dtype=torch.float64), (torch.rand(2, 16) < 0.75).double()
    img32, mask32 = img64.float().to(ctx.device), mask64.float().to(ctx.device)
    rows = _correctness(
        ctx,
        "mae_loss",
        "2x3x56x56 p14",
        lambda pred: mae_loss(pred, img32, mask32, p, backend="triton"),
        lambda pred: mae_loss_ref(pred, img64, mask64, p),
        [torch.randn(2, 16, 3 * p * p, dtype=torch.float64)],
        ["loss", "dpred"],
    )
    B, side = (256, 224) if ctx.gpu else (2, 112)  # a CPU times the torch reference only: a small batch
    N, dt = (side // p) ** 2, _dtype(ctx)
    images = torch.randn(B, 3, side, side, device=ctx.device, dtype=dt)
    pred = torch.randn(B, N, 3 * p * p, device=ctx.device, dtype=dt, requires_grad=True)
    mask = (torch.rand(B, N, device=ctx.device) < 0.75).to(dt)
    nbytes = images.numel() * images.element_size() + pred.numel() * pred.element_size()
    return rows + _bench_backends(
        ctx,
        "mae_loss",
        f"vit_l/14 {B}x{N}x{3 * p * p}",
        dt,
        [pred],
        lambda: mae_loss_ref(pred, images, mask, p),
        lambda be: mae_loss(pred, images, mask, p, backend=be),
        _backends(ctx, "fastvit.ops.mae_loss"),
        {"fwd": nbytes, "bwd": 2 * nbytes, "fwd+bwd": 3 * nbytes},
        "GB/s",
    )


register("attention", bench_attention)
register("layer_norm", bench_layer_norm)
register("swiglu", bench_swiglu)
register("mae_loss", bench_mae_loss)


def bench_dino_loss(ctx):
    """Peak memory and time of the Web-DINO losses: fused Triton vs chunked torch vs plain torch (dino_loss.py)."""
    from fastvit.benchmarks.dino_loss import bench_dino_loss as run

    rows = []
    for r in run(ctx.device, ctx.quick):
        backend = r["name"].split("/")[1]
        case = f"B={r['B']} K={r['K'] // 1024}k {r['peak_bytes'] / 2**20:.0f}MiB"
        if "memory_ratio" in r:
            case += f" {r['memory_ratio']:.2f}x"
        keys = (
            "peak_bytes",
            "leaf_grad_bytes",
            "memory_ratio",
            "memory_ratio_without_leaf_grads",
            "loss_abs_err",
            "grad_max_rel_err",
            "student_cls",
            "teacher_cls",
            "masked_patches",
        )
        extra = {k: r[k] for k in keys if k in r}
        rows.append(_row("dino_loss", case, torch.float32, backend, "fwd+bwd", ms=r["seconds"] * 1e3, **extra))
    return rows


register("dino_loss", bench_dino_loss)


def bench_clip_loss(ctx):
    """Peak memory and time of the contrastive losses, plain torch vs the chunked op (benchmarks/clip_loss.py)."""
    from fastvit.benchmarks.clip_loss import bench_clip_loss as run

    return run(ctx)


register("clip_loss", bench_clip_loss)
