"""`fastvit bench kernels [op=attention|layer_norm|swiglu|mae_loss|dino_loss|clip_loss|all] [out=DIR] [quick=1]`.

On a GPU: times forward, backward and both for every available backend of each op plus a
torch.compile'd reference, on ViT shapes (ViT-L / g / 7B widths, 257 and 50 tokens, ~64K tokens
per batch), with triton.testing.do_bench; reports TFLOP/s (attention) or GB/s (norms, SwiGLU)
and the speed ratio to the eager torch reference. On a CPU: the Triton kernels' max error
against float64 through the interpreter on a small shape, and the eager timings of the torch
reference and of the fastvit torch backend (never a Triton timing). Prints a table and writes
kernels.json and one PNG bar chart per op into `out`. On a GPU each op's rows end with the registers,
spills and shared memory of every kernel binary it ran (compiled_rows).

Each op names its benchmark in its registration (fastvit.ops.backend.Registration.bench): the module
fastvit.benchmarks.<bench>, whose bench(ctx) returns the op's rows (see row). This file holds what they share:
timing, the rows, the table, the JSON and the PNG charts, the command line.
"""

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# name -> (width, heads); head dims 64, 64, 128
VIT_WIDTHS = {"vit_l": (1024, 16), "vit_g": (1536, 24), "vit_7b": (4096, 32)}


def benchmarks():
    """bench name -> the kernel modules (fastvit.kernels.<module>) its ops launch, from the ops' registrations."""
    from fastvit.ops import registrations

    found = {}
    for reg in registrations():
        found.setdefault(reg.bench, []).extend(k for k in reg.kernels if k not in found.get(reg.bench, []))
    return found


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


def row(op, case, dtype, backend, pass_, ms=None, work=None, unit="", ref_ms=None, **extra):
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


def bench_backends(ctx, op, case, dtype, inputs, reference, fastvit_fn, backends, work, unit):
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
            rows.append(row(op, case, dtype, name, "all", error=f"{type(e).__name__}: {e}"[:200]))
            continue
        rows += [row(op, case, dtype, name, p, ms[p], work[p], unit, ref_ms[p]) for p in ms]
    return rows


def _max_errors(actual, expected, names):
    return {n: (a.double() - e.double()).abs().max().item() for n, a, e in zip(names, actual, expected)}


def _fwd_bwd(fn, inputs, grads):
    leaves = [t.detach().requires_grad_() for t in inputs]
    outs = _as_list(fn(*leaves))
    return outs + list(torch.autograd.grad(outs, leaves, grads[: len(outs)]))


def correctness(ctx, op, case, fn, ref, inputs64, names, dtype=torch.float32):
    """Max abs error of the Triton backend (inputs in `dtype`) against the float64 reference, for each output and
    gradient."""
    if not (ctx.gpu or ctx.interpreted):
        return [row(op, case, dtype, "triton", "check", error="Triton interpreter unavailable")]
    dev = ctx.device
    n_out = len(_as_list(ref(*inputs64)))
    grads64 = [torch.randn_like(o) for o in _as_list(ref(*inputs64))]
    expected = _fwd_bwd(ref, inputs64, grads64)
    actual = _fwd_bwd(fn, [t.to(dev, dtype) for t in inputs64], [g.to(dev, dtype) for g in grads64[:n_out]])
    return [row(op, case, dtype, "triton", "check", max_abs_err=_max_errors(actual, expected, names))]


def _parse(argv):
    args = {"op": "all", "out": "bench_out/kernels", "quick": "0"}
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key not in args:
            raise ValueError(f"bench kernels: expected op=..., out=... or quick=..., got {a!r}")
        args[key] = value
    known = list(benchmarks())
    ops = known if args["op"] == "all" else args["op"].split(",")
    unknown = [o for o in ops if o not in known]
    if unknown:
        raise ValueError(f"bench kernels: unknown op {unknown}; choose from {sorted(known)} or all")
    return ops, Path(args["out"]), args["quick"] not in ("0", "false", "")


def _use_interpreter():
    """Without a GPU, run the Triton kernels through the interpreter (only possible before Triton is imported: its
    own @triton.jit helpers are defined then)."""
    if torch.cuda.is_available():
        return False
    if "triton" not in sys.modules:
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
        by_op[op] = importlib.import_module(f"fastvit.benchmarks.{op}").bench(ctx)
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


def compiled_rows(ctx, op):
    """On a GPU, one row per kernel binary the op's benchmark compiled: registers, spills (from the driver) and
    shared memory (from the compiled metadata), beside the timings. The CPU runs the interpreter: no binaries (the
    ahead-of-time check, python -m fastvit.kernels.aot, reports them without a GPU)."""
    if not ctx.gpu:
        return []
    import triton

    rows = []
    for module in benchmarks()[op]:
        try:
            mod = importlib.import_module(f"fastvit.kernels.{module}")
        except ImportError:
            continue
        for fn in vars(mod).values():
            if not isinstance(fn, triton.runtime.jit.JITFunction):
                continue
            for kernel_cache, *_ in list(fn.device_caches.values()):
                for compiled in kernel_cache.values():
                    rows.append(_compiledrow(op, fn, compiled))
    return rows


def _compiledrow(op, fn, compiled):
    compiled._init_handles()  # loads the binary: the driver reports registers and spills
    meta = compiled.metadata
    constants = getattr(getattr(compiled, "src", None), "constants", {}) or {}
    blocks = "x".join(str(v) for k, v in sorted(constants.items()) if isinstance(v, int) and not isinstance(v, bool))
    case = f"{fn.__name__} {blocks} w{meta.num_warps}s{meta.num_stages}"
    return row(
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

    rows = rows or [{**row(op, "no timed rows", "", "", ""), "value": 0.0}]
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


# ---- shared by the ops' benchmarks ------------------------------------------------------------------------


def timed_backends(ctx, registration):
    """fastvit backends to time: all available ones on a GPU; on a CPU only "torch" (the interpreter is not timed)."""
    found = registration.available(ctx.device)
    return found if ctx.gpu else [b for b in found if b == "torch"]


def shapes(ctx):
    """[(label, width, heads, tokens per sequence)] timed on this device."""
    if not ctx.gpu:
        return [("cpu_vit_s", 384, 6, 197)]
    names = ["vit_l", "vit_7b"] if ctx.quick else list(VIT_WIDTHS)
    return [(name, *VIT_WIDTHS[name], n) for name in names for n in ((257,) if ctx.quick else (257, 50))]


def total_tokens(ctx):
    return (16384 if ctx.quick else 65536) if ctx.gpu else 4 * 197


def bench_dtype(ctx):
    return torch.bfloat16 if ctx.gpu else torch.float32
