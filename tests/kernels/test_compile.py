"""Every Triton kernel compiled ahead of time for sm_80 and sm_90a, without a GPU (fastvit.kernels.aot): no compile
error, no register spill, shared memory within the chip. The compiler needs real @triton.jit functions, and this
process defines the kernels under TRITON_INTERPRET=1 (tests/conftest.py), so the compiles run in a subprocess
without it. The CPU tier compiles the representative set (per kernel and block width the largest and the smallest
tile, bf16); benchmarks/gpu_suite.sh and `python -m fastvit.kernels.aot --all` compile every launch variant
(every variant for both targets: too many compiles for the CPU tier). Reports are cached under
~/.cache/fastvit/aot, so an unchanged kernel is compiled once per machine."""

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastvit.kernels import aot

KERNELS = Path(aot.__file__).resolve().parent


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the launch default, stated (triton 3.9 warns otherwise)
    return env


def _run(args, timeout):
    return subprocess.run(
        [sys.executable, *args], env=_env(), capture_output=True, text=True, timeout=timeout, cwd=KERNELS.parent
    )


def _sweep(tmp_path, timeout):
    out = tmp_path / "aot.json"
    proc = _run(["-m", "fastvit.kernels.aot", "--quiet", "--json", str(out)], timeout)
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


def test_representative_variants_compile_for_sm80_and_sm90a(tmp_path):
    reports = _sweep(tmp_path, timeout=1500)
    assert {r["target"] for r in reports} == {"sm_80", "sm_90a"}
    compiled_ops = {r["name"].split(".")[0] for r in reports}
    assert compiled_ops == set(aot.OPS), f"ops without a compiled variant: {sorted(set(aot.OPS) - compiled_ops)}"


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


def test_harness_detects_spills_compile_errors_and_shared_memory():
    """The attention forward compiled through the same function with tiles the wrappers never launch: 128 x 128 at
    head dim 128 on 4 warps spills, a head dim of 80 (not a power of two) is a compile error, 128 x 128 with 4 stages
    needs more shared memory than an A100 has."""
    proc = _run(["-c", textwrap.dedent(_PROBE)], timeout=1200)
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
