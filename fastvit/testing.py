"""Test helpers shared by fastvit's tests and by anyone writing a kernel against it.

- assert_close: like torch.testing.assert_close, but the failure message always carries the
  max / mean absolute error, the worst element and NaN/inf counts of both sides.
- low_precision_tol: a tolerance tied to PyTorch's own error in a low precision against a
  float64 reference (FlashAttention's rule: a kernel may be at most ~2x worse than torch).
- run_ranks: run a function on N gloo ranks on the CPU and return each rank's result.
"""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def error_report(actual, expected):
    """One-line summary of how far `actual` is from `expected` (both compared in float64)."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    diff = (a - e).abs()
    finite = torch.isfinite(diff)
    d = diff[finite]
    if d.numel():
        worst = int(torch.where(finite, diff, torch.zeros_like(diff)).argmax())
        where = f"worst at flat index {worst}: {a.flatten()[worst].item():.6g} vs {e.flatten()[worst].item():.6g}"
        errs = f"max abs err {d.max().item():.3e}, mean abs err {d.mean().item():.3e}"
    else:
        where, errs = "no finite differences", "max abs err n/a"
    bad = lambda t: f"{int(torch.isnan(t).sum())} NaN / {int(torch.isinf(t).sum())} inf"
    return f"shape {tuple(a.shape)}: {errs}; {where}; actual {bad(a)}, expected {bad(e)}"


def assert_close(actual, expected, *, atol, rtol=0.0, name="tensor"):
    """Asserts |actual - expected| <= atol + rtol * |expected| elementwise; NaN/inf never pass."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    ok = torch.isfinite(a) & torch.isfinite(e) & ((a - e).abs() <= atol + rtol * e.abs())
    if not bool(ok.all()):
        n_bad = int((~ok).sum())
        raise AssertionError(
            f"{name}: {n_bad}/{ok.numel()} elements outside atol={atol:g} rtol={rtol:g}; {error_report(a, e)}"
        )


def low_precision_tol(fn, inputs, dtype, *, factor=2.0, floor=1e-6):
    """Absolute tolerance for a kernel computing `fn` in `dtype`.

    Runs `fn` on the inputs cast to `dtype` with plain PyTorch and on the inputs in float64, and
    returns factor * (PyTorch's own max abs error) + floor. A kernel passes if its error against
    the float64 result stays within this bound. `fn` takes tensors and returns one tensor.
    """
    lo = fn(*[x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs])
    hi = fn(*[x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs])
    return factor * (lo.double() - hi).abs().max().item() + floor


def _rank_main(rank, world_size, port, fn, args, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False)  # the parent's (run_ranks)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while a peer is still in a collective
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world_size, *args):
    """Runs fn(rank, world_size, *args) on `world_size` gloo ranks (spawned processes on the CPU)
    and returns the list of their return values (anything torch.save can write), in rank order.

    `fn` must be importable by name (a module-level function); an exception on any rank fails
    the call with that rank's traceback.
    """
    # the parent listens on a port the system picks and keeps it until the ranks end: no other test's ranks can
    # take it in between (a port probed free, closed and handed on could be taken by a test running beside)
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _rank_main,
            args=(world_size, store.port, fn, args, out_dir),
            nprocs=world_size,
            join=True,
            start_method="spawn",
        )
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


def _vm(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/self/status has no {field}")


def peak_host_bytes_above(fn):
    """(fn(), bytes): how far this process's peak resident memory rose above its resident memory before fn ran
    (Linux: the peak is reset through /proc/self/clear_refs, then read as VmHWM). Every host allocation counts,
    torch's or not; what fn frees before it returns counts at its peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = _vm("VmRSS")
    out = fn()
    return out, max(_vm("VmHWM") - before, 0)
