"""Peak memory and time of the contrastive loss: plain torch (the (b, B) logits materialised, autograd) vs the
chunked op (fastvit.ops.clip_loss), one forward + backward of symmetric InfoNCE and of SigLIP from trainable
L2-normalised features. Peak memory: torch.cuda.max_memory_allocated on a GPU; on a CPU the growth of the
resident set (fastvit.benchmarks.dino_loss.cpu_peak_rss). The benchmark fastvit.ops.clip_loss registers:
`fastvit bench kernels op=clip_loss`.
"""

import time

import torch
import torch.nn.functional as F
from fastvit.benchmarks.dino_loss import cpu_peak_rss
from fastvit.benchmarks.kernels import row
from fastvit.kernels.clip_loss import clip_loss_ref

from fastvit.ops import clip_loss


def _step(img, txt, scale, bias, kind, backend):
    if backend == "plain":
        if kind == "siglip":
            loss = clip_loss_ref(img, txt, scale, 0, bias, True)
        else:
            loss = (clip_loss_ref(img, txt, scale, 0) + clip_loss_ref(txt, img, scale, 0)) / 2
    elif kind == "siglip":
        loss = clip_loss(img, txt, scale, kind="siglip", logit_bias=bias, backend=backend)
    else:
        loss = (clip_loss(img, txt, scale, backend=backend) + clip_loss(txt, img, scale, backend=backend)) / 2
    loss.backward()
    return loss.detach(), img.grad, txt.grad


def _measure(x, kind, backend, device):
    img, txt = (t.clone().requires_grad_() for t in x)
    scale, bias = torch.tensor([14.0], device=device), torch.tensor([-10.0], device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base, t0 = torch.cuda.memory_allocated(), time.perf_counter()
        out = _step(img, txt, scale, bias, kind, backend)
        torch.cuda.synchronize()
        return out, torch.cuda.max_memory_allocated() - base, time.perf_counter() - t0
    t0 = time.perf_counter()
    out, peak = cpu_peak_rss(lambda: _step(img, txt, scale, bias, kind, backend))
    return out, peak, time.perf_counter() - t0


def bench(ctx):
    """Rows (see fastvit.benchmarks.kernels.row) per (batch, kind): plain torch and the chunked backend, with the
    chunked / plain peak-memory ratio and the loss / gradient differences."""
    fast = "triton" if ctx.gpu else "torch"  # the interpreter is not timed on a CPU
    sizes = ([8192] if ctx.quick else [8192, 32768]) if ctx.gpu else [2048 if ctx.quick else 4096]
    rows = []
    for B in sizes:
        g = torch.Generator().manual_seed(0)
        x = [F.normalize(torch.randn(B, 512, generator=g), dim=-1).to(ctx.device) for _ in range(2)]
        for backend in (fast, "plain"):  # warm-up: one-time allocations must not count against the first run
            _measure([t[:64] for t in x], "infonce", backend, ctx.device)
        for kind in ("infonce", "siglip"):
            (lc, *gc), peak_c, sec_c = _measure(x, kind, fast, ctx.device)  # chunked first: from a clean heap
            (lp, *gp), peak_p, sec_p = _measure(x, kind, "plain", ctx.device)
            err = max((a - b).abs().max().item() for a, b in zip(gc, gp))
            case = f"{kind} B={B} D=512"
            rows.append(
                row("clip_loss", case, torch.float32, "plain torch", "fwd+bwd", ms=sec_p * 1e3, peak_bytes=peak_p)
            )
            rows.append(
                row(
                    "clip_loss",
                    f"{case} peak {peak_c / 2**20:.0f}/{peak_p / 2**20:.0f}MiB",
                    torch.float32,
                    f"chunked {fast}",
                    "fwd+bwd",
                    ms=sec_c * 1e3,
                    ref_ms=sec_p * 1e3,
                    peak_bytes=peak_c,
                    memory_ratio=peak_c / max(peak_p, 1),
                    loss_abs_err=abs(lc - lp).item(),
                    grad_max_abs_err=err,
                )
            )
    return rows
