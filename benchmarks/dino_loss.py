"""Time and peak memory of the Web-DINO losses: fused Triton kernels vs chunked torch vs plain torch.

One forward + backward of the DINO + iBOT + KoLeo losses (Sinkhorn centering, 2 global + 8 local crops, 131,072
prototypes, DINO bottleneck 384, iBOT 256, masks on half of the global crops at ratio ~0.3 of 256 patches: at
B = 32 images per rank, 320 student and 64 teacher CLS rows and ~2,450 masked patches) from the heads' bottleneck
features and prototypes (trainable leaves; their gradients are counted):
    fused_triton   WebDINOObjective(backend="triton"): kernels/sinkhorn.py + kernels/prototype_cross_entropy.py
    chunked_torch  WebDINOObjective(backend="torch"): the same factored path in 8,192-prototype torch blocks
    plain_torch    materialised logits [rows, K]: DINOv2's Sinkhorn-Knopp and log_softmax cross-entropies
The parameter gradients ([K, D] per head, held by every path at the end) are reported separately and the ratios
are given with and without them. Peak memory: torch.cuda.max_memory_allocated on a GPU; on a CPU the growth of the
process's resident set (VmHWM after a reset, Linux), which sees every allocation including those inside the
custom ops; the factored paths run first so heap left over by the plain run cannot hide their growth. GPU times:
triton.testing.do_bench of the whole forward + backward.
On a CPU the Triton kernels run only under TRITON_INTERPRET=1, slowly: there the fused row reports the
interpreter's error against float64 at a reduced K (interpreter_K) instead of a time at K = 131,072.
The benchmark the DINO ops (fastvit.ops.prototype_targets, prototype_cross_entropy) register:
`fastvit bench kernels op=dino_loss`.
"""

import ctypes
import json
import sys
import time

import torch
from fastvit.benchmarks.kernels import row
from fastvit.kernels.sinkhorn import sinkhorn_knopp_ref

from fastvit.models.heads import PrototypeLogits
from fastvit.objectives.koleo import koleo_loss
from fastvit.objectives.losses import ibot_masks_weight
from fastvit.ops.prototype_targets import REGISTRATION
from fastvit.tasks.web_dino.objective import WebDINOObjective

K_FULL = 131072
INTERPRETER_K, INTERPRETER_K_QUICK = 1031, 131  # primes: the interpreter's check runs the kernels' masked tails


def _proc_status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} missing from /proc/self/status")


def cpu_peak_rss(fn):
    """(fn(), peak resident bytes above the starting RSS while fn ran), via VmHWM reset; Linux only.

    Freed heap is handed back first (malloc_trim) so earlier runs do not hide this one's growth.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    base = _proc_status_bytes("VmRSS")
    out = fn()
    return out, _proc_status_bytes("VmHWM") - base


def _inputs(B, K, device, seed=0, dtype=torch.float32):
    g = torch.Generator(device="cpu").manual_seed(seed)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g, dtype=torch.float64), dim=-1)
    masks = torch.zeros(2 * B, 256, dtype=torch.bool)
    masks[:B] = torch.rand(B, 256, generator=g) < 0.3  # half of the global crops masked
    M = int(masks.sum())
    x = {
        "s_glob": unit(2, B, 384),
        "s_loc": unit(8, B, 384),
        "t_glob": unit(2, B, 384),
        "s_patch": unit(M, 256),
        "t_patch": unit(M, 256),
        "cls": unit(2, B, 64),
        "w_dino": unit(K, 384),
        "w_ibot": unit(K, 256),
        "tw_dino": unit(K, 384),
        "tw_ibot": unit(K, 256),
    }
    x = {k: v.to(device=device, dtype=dtype) for k, v in x.items()}
    x["masks"] = masks.to(device)
    return x


_LEAVES = ("s_glob", "s_loc", "s_patch", "w_dino", "w_ibot")
TEACHER_TEMP = 0.07


def plain_losses(x, leaves):
    """The losses from materialised logits (DINOv2's way): Sinkhorn-Knopp on [rows, K], log_softmax CE."""
    n_g, n_l = 2, 8
    n_terms = n_g * n_l + (n_g - 1) * n_g
    tg = (x["t_glob"] @ x["tw_dino"].t()).reshape(-1, x["tw_dino"].shape[0])
    p = sinkhorn_knopp_ref(tg, TEACHER_TEMP).view(n_g, -1, tg.shape[1])  # [n_g, B, K]
    lsm = lambda f, w: torch.log_softmax((f @ w.t()).float() / 0.1, dim=-1)
    ls_g, ls_l = lsm(leaves["s_glob"], leaves["w_dino"]), lsm(leaves["s_loc"], leaves["w_dino"])
    dino_g = sum(-(p[1 - i] * ls_g[i]).sum(-1).mean() for i in range(n_g)) / n_terms
    dino_l = sum(-(p[j] * ls_l[i]).sum(-1).mean() for i in range(n_l) for j in range(n_g)) / n_terms
    masks = x["masks"]
    pp = sinkhorn_knopp_ref(x["t_patch"] @ x["tw_ibot"].t(), TEACHER_TEMP)
    ce = -(pp * lsm(leaves["s_patch"], leaves["w_ibot"])).sum(-1)
    ibot = (ce * ibot_masks_weight(masks)).sum() / masks.shape[0] * 2 / n_g
    koleo = sum(koleo_loss(x["cls"][i]) for i in range(n_g))
    return dino_g + dino_l + ibot + 0.1 * koleo


def factored_losses(x, leaves, backend):
    f = PrototypeLogits
    objective = WebDINOObjective(n_global=2, n_local=8, backend=backend)
    out = objective(
        student_global=f(leaves["s_glob"], leaves["w_dino"]),
        student_local=f(leaves["s_loc"], leaves["w_dino"]),
        teacher_global=f(x["t_glob"], x["tw_dino"]),
        student_patches=f(leaves["s_patch"], leaves["w_ibot"]),
        teacher_patches=f(x["t_patch"], x["tw_ibot"]),
        masks=x["masks"],
        student_cls=x["cls"],
        teacher_temp=TEACHER_TEMP,
    )
    return out["total"]


def _step(x, leaves, path):
    """One loss forward + backward from trainable leaves; returns (total loss, leaf gradients)."""
    for v in leaves.values():
        v.grad = None
    total = plain_losses(x, leaves) if path == "plain_torch" else factored_losses(x, leaves, path.split("_")[1])
    total.backward()
    return total.detach(), {k: v.grad for k, v in leaves.items()}


def _leaves(x):
    return {k: x[k].clone().requires_grad_() for k in _LEAVES}  # the parameters: outside the measurement


def _measure(x, path, device):
    leaves = _leaves(x)
    if device.type == "cuda":
        import triton.testing

        _step(x, leaves, path)  # warm-up: compiles the kernels
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss, grads = _step(x, leaves, path)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        seconds = triton.testing.do_bench(lambda: _step(x, leaves, path), warmup=2, rep=20) / 1e3
        return loss, grads, peak, seconds
    t0 = time.perf_counter()
    (loss, grads), peak = cpu_peak_rss(lambda: _step(x, leaves, path))
    return loss, grads, peak, time.perf_counter() - t0


def _errors(loss, grads, loss_ref, grads_ref):
    grad_err = max(((grads[k].double() - grads_ref[k]).abs().max() / grads_ref[k].abs().max()).item() for k in grads)
    return {"loss_abs_err": abs(loss.double() - loss_ref).item(), "grad_max_rel_err": grad_err}


def interpreter_accuracy(B, K=INTERPRETER_K):
    """The Triton kernels under the interpreter against the float64 plain losses at a reduced K (CPU only)."""
    x64 = _inputs(B, K, "cpu", dtype=torch.float64)
    loss64, grads64 = _step(x64, _leaves(x64), "plain_torch")
    x = {k: (v.float() if v.is_floating_point() else v) for k, v in x64.items()}
    t0 = time.perf_counter()
    loss, grads = _step(x, _leaves(x), "fused_triton")
    return {"seconds": time.perf_counter() - t0, **_errors(loss, grads, loss64, grads64)}


def bench_dino_loss(device, quick: bool) -> list[dict]:
    """Rows {name, B, K, rows, peak_bytes, seconds, ...}: per path, and on a CPU the interpreter's accuracy."""
    device = torch.device(device)
    triton_here = "triton" in REGISTRATION.available(device)
    rows = []
    sizes = (8,) if quick else (32,)
    if device.type == "cpu":
        sizes = (2,) if quick else (8,)  # the plain path's [~600, 131072] iBOT logits and their grads fit a CPU
    for B in sizes:
        x = _inputs(B, K_FULL, device)
        n_rows = {"student_cls": 10 * B, "teacher_cls": 2 * B, "masked_patches": int(x["masks"].sum())}
        common = {"B": B, "K": K_FULL, **n_rows, "device": str(device)}
        paths = ["fused_triton"] if device.type == "cuda" and triton_here else []
        results = {p: _measure(x, p, device) for p in paths + ["chunked_torch", "plain_torch"]}
        loss_p, grads_p, peak_p, _ = results["plain_torch"]
        grad_bytes = sum(g.numel() * g.element_size() for g in grads_p.values())  # held by all at the end
        for path, (loss, grads, peak, seconds) in results.items():
            row = {"name": f"dino_loss/{path}", **common, "peak_bytes": peak, "seconds": seconds}
            row["leaf_grad_bytes"] = grad_bytes
            if path != "plain_torch":
                row["memory_ratio"] = peak / peak_p
                row["memory_ratio_without_leaf_grads"] = (peak - grad_bytes) / max(peak_p - grad_bytes, 1)
                row.update(_errors(loss, grads, loss_p.double(), {k: g.double() for k, g in grads_p.items()}))
            rows.append(row)
    if device.type == "cpu" and triton_here:
        B, K = (2, INTERPRETER_K_QUICK) if quick else (2, INTERPRETER_K)  # KoLeo needs 2 images
        acc = interpreter_accuracy(B, K)
        masks = _inputs(B, K, "cpu")["masks"]
        rows.append(
            {
                "name": "dino_loss/fused_triton_interpreter",
                "B": B,
                "K": K,
                "student_cls": 10 * B,
                "masked_patches": int(masks.sum()),
                "device": "cpu (TRITON_INTERPRET=1)",
                "peak_bytes": 0,
                **acc,
            }
        )
    return rows


def bench(ctx):
    """`fastvit bench kernels op=dino_loss`: the rows of bench_dino_loss in the kernel benchmark's table."""
    rows = []
    for r in bench_dino_loss(ctx.device, ctx.quick):
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
        rows.append(row("dino_loss", case, torch.float32, backend, "fwd+bwd", ms=r["seconds"] * 1e3, **extra))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "quick" in argv or "quick=true" in argv or "quick=1" in argv
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = bench_dino_loss(device, quick)
    for r in rows:
        extra = ""
        if "memory_ratio" in r:
            no_grads = r["memory_ratio_without_leaf_grads"]
            extra = f"  memory / plain = {r['memory_ratio']:.3f} ({no_grads:.3f} without the leaf grads)"
        if "grad_max_rel_err" in r:
            extra += f"  loss err {r['loss_abs_err']:.2e} grad rel err {r['grad_max_rel_err']:.2e}"
        line = f"{r['name']:<36} B={r['B']:<3} K={r['K']:<6} peak {r['peak_bytes'] / 2**20:9.1f} MiB"
        print(f"{line}  {r['seconds'] * 1e3:9.1f} ms{extra}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
