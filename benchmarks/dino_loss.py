"""Peak memory and time of the Web-DINO objective: plain torch (materialised logits) vs the chunked prototype path.

One forward + backward of WebDINOObjective (Sinkhorn centering, 2 global + 8 local crops, 131,072 prototypes,
DINO bottleneck 384, iBOT 256, masks on half of the global crops at ratio ~0.3 of 256 patches) starting from the
heads' normalised bottleneck features and prototypes (both trainable leaves; their gradients are counted).
The parameter gradients ([K, D] per head, held by both paths at the end) are reported separately and the
ratio is given with and without them. Peak memory: torch.cuda.max_memory_allocated on a GPU; on a CPU the growth
of the process's resident set (VmHWM after a reset, Linux), which sees every allocation including those inside
the custom ops; the chunked path runs first so heap left over by the plain run cannot hide its growth.
Registered as `fastvit bench kernels op=dino_loss`.
"""

import ctypes
import json
import sys
import time

import torch

from fastvit.models.heads import PrototypeLogits
from fastvit.objectives.dino import WebDINOObjective


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


def _inputs(B, K, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1).to(device)
    masks = torch.zeros(2 * B, 256, dtype=torch.bool)
    masks[:B] = torch.rand(B, 256, generator=g) < 0.3  # half of the global crops masked
    M = int(masks.sum())
    return {
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
        "masks": masks.to(device),
    }


_LEAVES = ("s_glob", "s_loc", "s_patch", "w_dino", "w_ibot")


def _step(x, leaves, chunked):
    """One objective forward + backward from trainable leaves (features, prototypes); returns the total loss."""
    if chunked:
        f = PrototypeLogits
    else:
        f = lambda feats, protos: feats @ protos.t()
    objective = WebDINOObjective(n_global=2, n_local=8)
    out = objective(
        f(leaves["s_glob"], leaves["w_dino"]),
        f(leaves["s_loc"], leaves["w_dino"]),
        f(x["t_glob"], x["tw_dino"]),
        f(leaves["s_patch"], leaves["w_ibot"]),
        f(x["t_patch"], x["tw_ibot"]),
        x["masks"],
        x["cls"],
        0.07,
    )
    out["total"].backward()
    return out["total"].detach(), {k: v.grad for k, v in leaves.items()}


def _measure(x, chunked, device):
    leaves = {k: x[k].clone().requires_grad_() for k in _LEAVES}  # the parameters: outside the measurement
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        loss, grads = _step(x, leaves, chunked)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        return loss, grads, torch.cuda.max_memory_allocated() - base, seconds
    t0 = time.perf_counter()
    (loss, grads), peak = cpu_peak_rss(lambda: _step(x, leaves, chunked))
    return loss, grads, peak, time.perf_counter() - t0


def bench_dino_loss(device, quick: bool) -> list[dict]:
    """Rows {name, B, K, rows, peak_bytes, seconds, ...}; the chunked row carries the memory ratio and errors."""
    device = torch.device(device)
    K = 131072
    rows = []
    for B in (4,) if quick else (8, 32):
        x = _inputs(B, K, device)
        n_rows = {"student_cls": 10 * B, "masked_patches": int(x["masks"].sum())}
        loss_c, grads_c, peak_c, sec_c = _measure(x, True, device)  # chunked first: from a clean heap
        loss_p, grads_p, peak_p, sec_p = _measure(x, False, device)
        grad_err = max((grads_c[k].float() - grads_p[k].float()).abs().max().item() for k in grads_p)
        common = {"B": B, "K": K, **n_rows, "device": str(device)}
        grad_bytes = sum(g.numel() * g.element_size() for g in grads_p.values())  # held by both at the end
        rows.append(
            {
                "name": "dino_loss/plain_torch",
                **common,
                "peak_bytes": peak_p,
                "seconds": sec_p,
                "leaf_grad_bytes": grad_bytes,
            }
        )
        rows.append(
            {
                "name": "dino_loss/chunked",
                **common,
                "peak_bytes": peak_c,
                "seconds": sec_c,
                "leaf_grad_bytes": grad_bytes,
                "memory_ratio": peak_c / peak_p,
                "memory_ratio_without_leaf_grads": (peak_c - grad_bytes) / (peak_p - grad_bytes),
                "loss_abs_err": abs(loss_c - loss_p).item(),
                "grad_max_abs_err": grad_err,
            }
        )
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "quick" in argv or "quick=true" in argv
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = bench_dino_loss(device, quick)
    for r in rows:
        ratio = ""
        if "memory_ratio" in r:
            no_grads = r["memory_ratio_without_leaf_grads"]
            ratio = f"  ratio chunked/plain = {r['memory_ratio']:.3f} ({no_grads:.3f} without the leaf grads)"
        print(f"{r['name']:<24} B={r['B']:<3} peak {r['peak_bytes'] / 2**20:9.1f} MiB  {r['seconds']:7.3f} s{ratio}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
