"""Every Triton kernel compiled ahead of time for sm_80 and sm_90a, without a GPU (fastvit.kernels.aot): no compile
error, no register spill, no 32-bit product of two run-time values, shared memory within the chip. The compiler needs
real @triton.jit functions, and this process defines the kernels under TRITON_INTERPRET=1 (tests/conftest.py), so
the compiles run in a subprocess without it. The CPU tier compiles what runs: every variant the shipped recipes'
shapes launch (LayerNorm at the block of every recipe width, attention at the block of every recipe head dim, all
autotuned tiles) and, for the other kernels, the representative set (per kernel and block width the largest tile,
bf16); benchmarks/gpu_suite.sh runs the same selection, and `python -m fastvit.kernels.aot --all` compiles every
launch variant (too many compiles for the CPU tier). Reports are cached under ~/.cache/fastvit/aot, so an unchanged
kernel is compiled once per machine."""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest
from fastvit.kernels import aot


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the launch default, stated (triton 3.9 warns otherwise)
    return env


def _run(args, timeout, cwd):
    """python args in cwd, a folder outside the source tree: from the repository root the source fastvit/ (which
    holds no kernels/) would shadow a regular install's fastvit package, as `python -m` puts the cwd first."""
    return subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _sweep(tmp_path, timeout):
    out = tmp_path / "aot.json"
    proc = _run(["-m", "fastvit.kernels.aot", "--quiet", "--json", str(out)], timeout, tmp_path)
    assert out.exists(), (
        f"the sweep did not finish (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    reports = json.loads(out.read_text())["reports"]
    bad = [f"{r['name']} on {r['target']}: {'; '.join(r['problems'])}" for r in reports if r["problems"]]
    assert not bad, f"{len(bad)} of {len(reports)} compiles fail the limits:\n" + "\n".join(bad)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return reports


def test_every_kernel_module_lists_its_launch_variants():
    """Each kernels/<op>.py with a @triton.jit kernel (aot.OPS) has launch_variants() covering every *_kernel it
    defines, with a full signature (here the kernels are interpreter objects; their names and arguments match)."""
    assert {"attention", "layer_norm", "swiglu", "clip_loss", "mae_loss"} <= set(aot.OPS), aot.OPS
    for op in aot.OPS:
        mod = importlib.import_module(f"fastvit.kernels.{op}")
        assert hasattr(mod, "launch_variants"), f"kernels/{op}.py has no launch_variants()"
        variants = mod.launch_variants()
        kernels = {name for name, obj in vars(mod).items() if name.endswith("_kernel") and hasattr(obj, "arg_names")}
        listed = {v.fn.__name__ for v in variants}
        assert kernels <= listed, f"kernels/{op}.py: launch_variants() misses {sorted(kernels - listed)}"
        for v in variants:
            assert list(v.signature) == list(v.fn.arg_names), f"{v.name}: signature keys != the kernel's arguments"
            constexprs = {k for k, t in v.signature.items() if t == "constexpr"}
            assert constexprs == set(v.constexprs), f"{v.name}: constexpr entries {constexprs} != {set(v.constexprs)}"
        assert len({v.name for v in variants}) == len(variants), f"kernels/{op}.py: variant names repeat"


def test_recipe_and_representative_variants_compile_for_sm80_and_sm90a(tmp_path):
    reports = _sweep(tmp_path, timeout=1500)
    assert {r["target"] for r in reports} == {"sm_80", "sm_90a"}
    compiled_ops = {r["name"].split(".")[0] for r in reports}
    assert compiled_ops == set(aot.OPS), f"ops without a compiled variant: {sorted(set(aot.OPS) - compiled_ops)}"
    compiled = {r["name"] for r in reports}
    for width in (1024, 4096):  # ViT-L (the suite's model; its backward spilled on sm_90a at 4 warps), ViT-7B
        for kind in ("fwd", "bwd"):
            assert f"layer_norm.{kind}.bf16.w_fp32.res.n{width}" in compiled
            assert f"layer_norm.{kind}.bf16.w_bf16.plain.n{width}" in compiled


def test_recipe_shapes_select_their_variants():
    """The shapes come from the recipes (ViT-L 1024 wide, 16 heads of 64; ViT-7B 4096 wide, heads of 128; the MAE
    decoder and CLIP text towers), and the selection holds every autotuned attention tile at those head dims."""
    widths, head_dims = aot.recipe_shapes()
    assert {192, 512, 1024, 4096} <= set(widths) and {64, 128} <= set(head_dims), (widths, head_dims)
    vs = aot.variants()
    picked = {v.name for v in aot.recipe_variants(vs)}
    ln_blocks = {int(n.rsplit(".n", 1)[1]) for n in picked if n.startswith("layer_norm.")}
    assert ln_blocks == {min(2 ** (w - 1).bit_length(), 4096) for w in widths}
    tiles = [v.name for v in vs if v.name.startswith("attention.") and ".bf16." in v.name]
    assert tiles and set(tiles) <= picked, sorted(set(tiles) - picked)
    assert len(aot.ci_selection(vs)) < len(vs) / 4  # bounded: not the full sweep


_PROBE = """
import json, sys
from dataclasses import asdict, replace
from fastvit.kernels import aot, attention

def fwd(block_m, block_n, block_d, warps, stages):
    (base,) = [v for v in attention.launch_variants() if v.name.startswith("attention.fwd.bf16.packed.d128.128x64")]
    ce = dict(base.constexprs, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    name = f"probe.{block_m}x{block_n}.d{block_d}.w{warps}s{stages}"
    return replace(base, name=name, constexprs=ce, num_warps=warps, num_stages=stages)

probes = {"spill": fwd(128, 128, 128, 4, 2), "error": fwd(64, 64, 80, 4, 2), "smem": fwd(128, 128, 128, 8, 4)}
print(json.dumps({k: asdict(aot.compile_variant(v, "sm_80", cache_dir=None)) for k, v in probes.items()}))
"""


def test_harness_detects_spills_compile_errors_and_shared_memory(tmp_path):
    """The attention forward compiled through the same function with tiles the wrappers never launch: 128 x 128 at
    head dim 128 on 4 warps spills, a head dim of 80 (not a power of two) is a compile error, 128 x 128 with 4 stages
    needs more shared memory than an A100 has."""
    proc = _run(["-c", textwrap.dedent(_PROBE)], timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    spill, error, smem = reports["spill"], reports["error"], reports["smem"]
    assert spill["error"] is None and spill["spill_bytes"] > 0, spill
    assert any(p.startswith("spills") for p in spill["problems"]), spill
    assert error["error"] and error["problems"][0].startswith("compile error"), error
    assert smem["shared_bytes"] > aot.TARGETS["sm_80"][1], smem
    assert any(p.startswith("shared memory") for p in smem["problems"]), smem


def test_ptxas_report_parsing_and_limits():
    log = (
        "ptxas info    : Compiling entry function '_attn_fwd_kernel' for 'sm_90a'\n"
        "ptxas info    : Function properties for _attn_fwd_kernel\n"
        "    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 8 bytes cumulative stack size\n"
    )
    assert aot.parse_ptxas(log) == (255, 28, 8)
    with pytest.raises(ValueError, match="no register"):
        aot.parse_ptxas("ptxas info    : 0 bytes gmem")
    ok = aot.check(aot.Report("k", "sm_80", registers=128, spill_bytes=0, stack_bytes=0, shared_bytes=163 * 1024))
    assert ok.problems == []
    over = aot.check(aot.Report("k", "sm_80", registers=128, spill_bytes=0, stack_bytes=0, shared_bytes=164 * 1024))
    assert over.problems == [f"shared memory {164 * 1024} B > {163 * 1024} B"]
    h100 = aot.check(aot.Report("k", "sm_90a", registers=128, spill_bytes=0, stack_bytes=0, shared_bytes=164 * 1024))
    assert h100.problems == []
    failed = aot.check(aot.Report("k", "sm_90a", error="CompilationError: at 3:4\nValueError: arange's range"))
    assert failed.problems == ["compile error: ValueError: arange's range"]


def test_int32_products_of_runtime_values_are_reported():
    """Every compile lists the 32-bit products of two run-time values in its TTIR (aot.int32_products), a problem
    like a spill: SwiGLU's old bound `M * H` wrapped past 2^31 elements; a loop counter with a run-time bound times
    a size counts too. Products with a constant or a tl.arange factor, and 64-bit ones, are bounded and pass."""
    ttir = """
  tt.func public @k(%x_ptr: !tt.ptr<bf16> {tt.divisibility = 16 : i32} loc("x_ptr"(#loc)), %M: i32 loc("M"(#loc)), \
%H: i32 loc("H"(#loc))) attributes {noinline = false} {
    %c = arith.constant 1024 : i32 loc(#loc1)
    %pid = tt.get_program_id x : i32 loc(#loc2)
    %tile = arith.muli %pid, %c : i32 loc(#loc3)
    %r = tt.make_range {end = 64 : i32, start = 0 : i32} : tensor<64xi32> loc(#loc4)
    %Hs = tt.splat %H : i32 -> tensor<64xi32> loc(#loc5)
    %in_tile = arith.muli %r, %Hs : tensor<64xi32> loc(#loc6)
    %bound = arith.muli %M, %H : i32 loc(#loc7)
    %row = arith.addi %pid, %c : i32 loc(#loc8)
    %rows = tt.splat %row : i32 -> tensor<64xi32> loc(#loc9)
    %offs = arith.muli %rows, %Hs : tensor<64xi32> loc(#loc10)
    %M64 = arith.extsi %M : i32 to i64 loc(#loc11)
    %H64 = arith.extsi %H : i32 to i64 loc(#loc12)
    %wide = arith.muli %M64, %H64 : i64 loc(#loc13)
    %acc = scf.for %j = %c to %M step %c iter_args(%a = %c) -> (i32)  : i32 {
      %jH = arith.muli %j, %H : i32 loc(#loc14)
"""
    found = aot.int32_products(ttir)
    assert [f.split(":")[0] for f in found] == ["%bound", "%offs", "%jH"], found
    report = aot.check(aot.Report("k", "sm_90a", registers=32, spill_bytes=0, shared_bytes=0, int32_products=found))
    assert report.problems and report.problems[0].startswith("int32 product of run-time values: %bound"), report
