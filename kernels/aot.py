"""Ahead-of-time compilation of the Triton kernels for real GPUs, without one.

Each kernels/<op>.py lists the variants its host wrapper can launch on a GPU (`launch_variants()`, built
from the same config lists the wrapper and its autotuner use). `compile_variant` compiles one variant with
`triton.compile` for a `GPUTarget` (ptxas ships in the triton wheel, no driver is needed) and reads what the
chip will see: registers and spilled bytes from ptxas's `-v` report (triton's knobs.nvidia.dump_ptxas_log),
shared memory from the compiled metadata. `check` applies the limits: no compile error, no spill, shared
memory within the chip's opt-in maximum per block (A100: 163 KB, H100 / H200: 227 KB; CUDA C Programming
Guide, "Compute Capabilities" table).

The compiler must see real @triton.jit functions, so compile in a process without TRITON_INTERPRET=1
(`python -m fastvit.kernels.aot` does: it is what the tests and the GPU suite run). Reports are cached as JSON
files keyed by the kernel's source hash, the variant and the target, so an unchanged kernel is never
compiled twice.
"""

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget

# name -> (target, shared memory per block in bytes)
TARGETS = {
    "sm_80": (GPUTarget("cuda", 80, 32), 163 * 1024),  # A100
    "sm_90a": (GPUTarget("cuda", 90, 32), 227 * 1024),  # H100 / H200 (triton compiles cc 90 as sm_90a)
}
# Every kernels/<op>.py that defines a @triton.jit function; each must define launch_variants().
OPS = tuple(
    sorted(p.stem for p in Path(__file__).parent.glob("*.py") if re.search(r"^@triton\.jit", p.read_text(), re.M))
)
DEFAULT_CACHE = Path.home() / ".cache" / "fastvit" / "aot"


@dataclass(frozen=True)
class Variant:
    """One launch configuration of a kernel: what its host wrapper passes on a GPU.

    signature maps every argument of fn to a triton type ("*bf16", "i32", "fp32") or "constexpr"; an int
    may carry a ":16" suffix (as in triton's tools/compile.py) when the wrapper's values are multiples of 16.
    Pointers are taken as 16-byte aligned (torch's allocations are)."""

    name: str
    fn: object  # the triton JITFunction
    signature: dict[str, str]
    constexprs: dict[str, object]
    num_warps: int
    num_stages: int


@dataclass
class Report:
    """What one variant compiled to on one target (error: the compiler's message, else None)."""

    name: str
    target: str
    registers: int | None = None
    spill_bytes: int | None = None  # ptxas's spill stores + spill loads
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    seconds: float = 0.0
    error: str | None = None
    int32_products: list[str] = field(default_factory=list)  # see int32_products()
    problems: list[str] = field(default_factory=list)


def signature(fn, constexprs, ptrs, fp32=(), div16=()):
    """ASTSource signature of fn: "constexpr" for constexprs, "*<dtype>" for ptrs (name -> dtype), "fp32" for the
    names in fp32, "i32:16" for those in div16, "i32" for the other ints."""

    def one(name):
        if name in constexprs:
            return "constexpr"
        if name in ptrs:
            return "*" + ptrs[name]
        return "fp32" if name in fp32 else "i32:16" if name in div16 else "i32"

    return {name: one(name) for name in fn.arg_names}


def dtype_name(dtype):
    """torch dtype -> triton signature name (torch.bfloat16 -> "bf16")."""
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int32": "i32", "int64": "i64"}[
        str(dtype).replace("torch.", "")
    ]


def _source(variant):
    fn = variant.fn
    if not isinstance(fn, triton.runtime.jit.JITFunction):
        raise RuntimeError(
            f"{variant.name}: {type(fn).__name__} is not a JITFunction; compile in a process without "
            "TRITON_INTERPRET=1 (python -m fastvit.kernels.aot)"
        )
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        ty = variant.signature[name]
        if ty.endswith(":16"):
            ty = ty[:-3]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif ty.startswith("*"):
            attrs[(i,)] = [["tt.divisibility", 16]]
        sig[name] = ty
    return triton.compiler.ASTSource(fn, sig, dict(variant.constexprs), attrs)


def _cache_key(variant, target):
    parts = [
        "report-v2",  # the Report fields (v2: int32_products)
        triton.__version__,
        variant.fn.cache_key,
        target,
        json.dumps(variant.signature, sort_keys=True),
        json.dumps({k: repr(v) for k, v in variant.constexprs.items()}, sort_keys=True),
        f"{variant.num_warps}-{variant.num_stages}",
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(log):
    """(registers, spill bytes, stack bytes) from ptxas -v output for one kernel."""
    regs, spill = _PTXAS_USED.search(log), _PTXAS_SPILL.search(log)
    if regs is None or spill is None:
        raise ValueError(f"no register / spill line in the ptxas report:\n{log}")
    return int(regs.group(1)), int(spill.group(2)) + int(spill.group(3)), int(spill.group(1))


_TTIR_ARG = re.compile(r"(%[\w.]+): i32\b")
_TTIR_OP = re.compile(r"^\s*(%[\w.]+)(?::\d+)? = ([\w.]+) (.*?)(?: loc\(.*)?$")
_TTIR_VALUE = re.compile(r"%[\w.]+")
_I32_RESULT = re.compile(r":\s*(?:tensor<[\dx]*i32>|i32)\s*$")
_TTIR_FOR = re.compile(r"scf\.for (%[\w.]+) = (%[\w.]+) to (%[\w.]+) step (%[\w.]+)")


def int32_products(ttir):
    """The 32-bit integer products in a kernel's TTIR whose two factors both derive from run-time values (its int
    arguments: sizes and strides, its program ids, what is computed or loaded from them, loop counters with such
    bounds): such a product, an index or a bound like `M * H`, wraps past 2^31 at large sizes (SwiGLU at the 7B's
    width past ~196k tokens). A product with a constant or a tl.arange factor (a tile offset) is bounded by the
    launch and is not listed. One line per product, as "name: the op"."""
    header = next((line for line in ttir.splitlines() if "tt.func" in line), "")
    runtime = set(_TTIR_ARG.findall(header))  # the int arguments (constexprs are folded in)
    found = []
    for line in ttir.splitlines():
        loop = _TTIR_FOR.search(line)
        if loop and any(v in runtime for v in loop.groups()[1:]):
            runtime.add(loop.group(1))
        m = _TTIR_OP.match(line)
        if m is None:
            continue
        name, op, rest = m.groups()
        operands = _TTIR_VALUE.findall(rest.split(" : ", 1)[0])
        if op == "tt.get_program_id" or any(o in runtime for o in operands):
            runtime.add(name)
        if op == "arith.muli" and len(operands) == 2 and all(o in runtime for o in operands):
            if _I32_RESULT.search(rest):
                found.append(f"{name}: {line.strip().split(' loc(', 1)[0]}")
    return found


def compile_variant(variant, target="sm_90a", cache_dir=DEFAULT_CACHE):
    """Compiles variant for target ("sm_80" or "sm_90a") and returns its Report, with the limits applied. Not
    thread-safe (it captures the process's stdout while ptxas reports)."""
    gpu_target, _ = TARGETS[target]
    path = None if cache_dir is None else Path(cache_dir) / f"{_cache_key(variant, target)}.json"
    if path is not None and path.exists():
        return check(Report(**{**json.loads(path.read_text()), "name": variant.name, "problems": []}))
    report, t0 = Report(variant.name, target), time.perf_counter()
    log = io.StringIO()
    try:
        src = _source(variant)
        # always_compile: ptxas runs even when triton's own cache holds the binary; dump_ptxas_log prints its -v
        # report to stdout (so one compile per process at a time: sweep() uses processes, not threads).
        with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True
            knobs.compilation.always_compile = True
            compiled = triton.compile(
                src, target=gpu_target, options={"num_warps": variant.num_warps, "num_stages": variant.num_stages}
            )
        report.registers, report.spill_bytes, report.stack_bytes = parse_ptxas(log.getvalue())
        report.shared_bytes = int(compiled.metadata.shared)
        report.int32_products = int32_products(compiled.asm["ttir"])
    except Exception as e:  # a compile error is the result being reported, not a crash of the sweep
        report.error = f"{type(e).__name__}: {e}".strip()[-2000:]  # the root cause is at the end
    report.seconds = round(time.perf_counter() - t0, 2)
    if path is not None and (report.error is None or "JITFunction" not in report.error):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: v for k, v in asdict(report).items() if k != "problems"}))
        tmp.replace(path)
    return check(report)


def check(report):
    """Fills report.problems: a compile error, a register spill, shared memory above the target's limit."""
    problems = []
    if report.error is not None:
        lines = [line for line in report.error.splitlines() if line.strip()] or [""]
        problems.append(f"compile error: {lines[-1].strip()}")
    else:
        if report.spill_bytes:
            problems.append(f"spills {report.spill_bytes} bytes ({report.registers} registers)")
        if report.int32_products:
            problems.append(f"int32 product of run-time values: {'; '.join(report.int32_products)}")
        limit = TARGETS[report.target][1]
        if report.shared_bytes > limit:
            problems.append(f"shared memory {report.shared_bytes} B > {limit} B")
    report.problems = problems
    return report


def variants(ops=OPS):
    """Every launch variant of the named ops (kernels/<op>.py launch_variants())."""
    import importlib

    out = []
    for op in ops:
        out += importlib.import_module(f"fastvit.kernels.{op}").launch_variants()
    names = [v.name for v in out]
    assert len(names) == len(set(names)), "variant names must be unique"
    return out


def _compile_one(args):
    op, name, target, cache_dir = args
    (variant,) = [v for v in variants([op]) if v.name == name]
    return asdict(compile_variant(variant, target, cache_dir))


def sweep(selection, targets=tuple(TARGETS), jobs=1, cache_dir=DEFAULT_CACHE):
    """Reports (as dicts) of every (variant, target); selection is [(op, variant name)]. jobs > 1 compiles in
    that many processes."""
    work = [(op, name, t, cache_dir) for op, name in selection for t in targets]
    if jobs <= 1:
        return [_compile_one(w) for w in work]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_compile_one, work, chunksize=1))


def _first_ptr(v):
    """The type of v's first pointer argument ("*bf16"), the kernel's data dtype."""
    return next((t for t in v.signature.values() if t.startswith("*")), "")


def representative(vs):
    """The CI subset: per kernel, block width (BLOCK_D) and layout (PACKED), the variant with the largest tile (the
    one most likely to spill or overflow shared memory), in bf16 where the kernel takes bf16 (fp16 compiles to the
    same register and shared-memory shape). The full sweep (`--all`) needs no GPU: run it on CPUs."""

    by_fn = {}
    for v in vs:
        by_fn.setdefault(v.fn, []).append(v)
    picked = []
    for members in by_fn.values():
        if any(_first_ptr(v) == "*bf16" for v in members):
            members = [v for v in members if _first_ptr(v) == "*bf16"]
        groups = {}
        for v in members:
            groups.setdefault((v.constexprs.get("BLOCK_D"), v.constexprs.get("PACKED")), []).append(v)
        for group in groups.values():
            picked.append(max(group, key=_weight))
    return picked


def recipe_shapes():
    """(LayerNorm widths, attention head dims) of every shipped recipe (fastvit/recipes): its backbone, and the MAE
    decoder or CLIP text tower where its objective has one."""
    from fastvit.config import load_config, recipe_names
    from fastvit.models.build import backbone_config
    from fastvit.tasks import spec_of

    widths, head_dims = set(), set()
    for name in recipe_names():
        cfg = load_config(name)
        towers = [(backbone_config(cfg.model).width, backbone_config(cfg.model).heads)]
        towers += spec_of(cfg.objective.name).transformers(cfg.objective.section)
        for width, heads in towers:
            widths.add(width)
            head_dims.add(width // heads)
    return sorted(widths), sorted(head_dims)


def recipe_variants(vs):
    """The variants the shipped recipes launch on a GPU, where a kernel has one per shape: LayerNorm at the block of
    every recipe width (x in bf16 or fp32 under bf16 autocast, weights in x's dtype or fp32), attention at the block
    of every recipe head dim (bf16; every autotuned tile). Widths above layer_norm.MAX_WIDTH run on torch."""
    from fastvit.kernels import attention, layer_norm

    widths, head_dims = recipe_shapes()
    ln_blocks = {triton.next_power_of_2(w) for w in widths if w <= layer_norm.MAX_WIDTH}
    att_blocks = {attention._block_d(d) for d in head_dims}
    ln_fns = (layer_norm._ln_fwd_kernel, layer_norm._ln_bwd_kernel)
    att_fns = (*attention._KERNELS.values(), attention._attn_bwd_delta_kernel)

    picked = []
    for v in vs:
        if v.fn in ln_fns:
            ok = v.constexprs["BLOCK_N"] in ln_blocks and v.signature["x_ptr"] in ("*bf16", "*fp32")
        elif v.fn in att_fns:
            ok = v.constexprs["BLOCK_D"] in att_blocks and _first_ptr(v) == "*bf16"
        else:
            ok = False
        if ok:
            picked.append(v)
    return picked


def ci_selection(vs):
    """The CPU tier's compiles: the representative set and every recipe-shape variant, each once."""
    seen, out = set(), []
    for v in representative(vs) + recipe_variants(vs):
        if v.name not in seen:
            seen.add(v.name)
            out.append(v)
    return out


def _weight(v):
    """Order of "most likely to spill": tile elements x stages, warps, then the optional paths switched on."""
    flags = sum(1 for val in v.constexprs.values() if val is True)
    return _tile_elems(v) * v.num_stages, v.num_warps, flags, v.name


def _tile_elems(v):
    n = 1
    for k, val in v.constexprs.items():
        if k.startswith("BLOCK") and isinstance(val, int):
            n *= val
    return n


def _table(reports):
    lines = [f"{'variant':<64}{'target':<8}{'regs':>5}{'spill B':>9}{'smem B':>8}  problems"]
    for r in reports:
        fmt = lambda x: "-" if x is None else str(x)
        lines.append(
            f"{r['name']:<64}{r['target']:<8}{fmt(r['registers']):>5}{fmt(r['spill_bytes']):>9}"
            f"{fmt(r['shared_bytes']):>8}  {'; '.join(r['problems'])}"
        )
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastvit.kernels.aot", description=__doc__.splitlines()[0])
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated ops (default: all)")
    p.add_argument(
        "--all", action="store_true", help="every launch variant (default: the representative set + the recipe shapes)"
    )
    p.add_argument("--match", default="", help="only variants whose name contains this")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="report cache folder ('' disables it)")
    p.add_argument("--json", default="", help="write the reports here")
    p.add_argument("--quiet", action="store_true", help="print only the failing variants and the summary")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("fastvit.kernels.aot: unset TRITON_INTERPRET (the interpreter has no compiler)", file=sys.stderr)
        return 2
    ops = [o for o in args.ops.split(",") if o]
    vs = variants(ops)
    vs = [v for v in (vs if args.all else ci_selection(vs)) if args.match in v.name]
    op_of = {v.name: v.fn.__module__.rsplit(".", 1)[-1] for v in vs}
    t0 = time.perf_counter()
    reports = sweep([(op_of[v.name], v.name) for v in vs], args.targets.split(","), args.jobs, args.cache or None)
    bad = [r for r in reports if r["problems"]]
    print(_table(bad if args.quiet else reports))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"reports": reports, "failed": len(bad)}, indent=1))
    print(
        f"compiled {len(reports)} (variant, target) pairs of {len(vs)} variants in {time.perf_counter() - t0:.0f} s: "
        f"{sum(1 for r in reports if r['error'])} compile errors, {sum(1 for r in reports if r['spill_bytes'])} "
        f"spill, {len(bad)} fail a limit"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
