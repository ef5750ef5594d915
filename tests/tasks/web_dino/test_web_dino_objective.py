"""WebDINOObjective on its one (factored) path: term pairing and counts, losses and every head gradient (g included)
against a hand-written float64 loop on materialised logits, for both centerings and both backends."""

import copy

import pytest
import torch

from fastvit.models.heads import DINOHead, PrototypeLogits
from fastvit.tasks.web_dino.objective import WebDINOObjective
from fastvit.testing import assert_close

N_G, N_L, B, N_PATCH, K = 2, 3, 5, 6, 301


def ce64(s, p, temp=0.1):
    return -(p.double() * torch.log_softmax(s.double() / temp, -1)).sum(-1)


def sinkhorn64(t, temp):
    Q = torch.exp(t.double() / temp).t()
    Q = Q / Q.sum()
    for _ in range(3):
        Q = Q / Q.sum(1, keepdim=True) / Q.shape[0]
        Q = Q / Q.sum(0, keepdim=True) / Q.shape[1]
    return (Q * Q.shape[1]).t()


def koleo64(x):
    x = torch.nn.functional.normalize(x.double(), dim=-1)
    d = torch.cdist(x, x) + torch.diag(torch.full((x.shape[0],), float("inf"), dtype=x.dtype))
    return -torch.log(d.min(1).values + 1e-8).mean()


def hand_loop(sg, sl, tg, sp, tp, masks, cls, temp, centers=None):
    """Loss terms from materialised logits; teacher targets by Sinkhorn, or softmax((t - c) / temp) with centers."""
    if centers is None:
        P, Pp = sinkhorn64(tg.reshape(N_G * B, K), temp).view(N_G, B, K), sinkhorn64(tp, temp)
    else:
        P, Pp = torch.softmax((tg - centers["dino"]) / temp, -1), torch.softmax((tp - centers["ibot"]) / temp, -1)
    n_terms = N_G * N_L + (N_G - 1) * N_G
    glob = sum(ce64(sg[i], P[j]).mean() for i in range(N_G) for j in range(N_G) if i != j) / n_terms
    loc = sum(ce64(sl[i], P[j]).mean() for i in range(N_L) for j in range(N_G)) / n_terms
    row, ibot = 0, 0.0
    for img in range(masks.shape[0]):
        n = int(masks[img].sum())
        for _ in range(n):
            ibot = ibot + ce64(sp[row], Pp[row]) / n
            row += 1
    ibot = ibot / masks.shape[0] * 2 / N_G
    koleo = sum(koleo64(cls[i]) for i in range(N_G))
    return {
        "dino_global": glob,
        "dino_local": loc,
        "ibot": ibot,
        "koleo": koleo,
        "total": glob + loc + ibot + 0.1 * koleo,
    }


def make_masks():
    masks = torch.rand(N_G * B, N_PATCH) < 0.4
    masks[B:] = False  # masks on half of the global crops, as in Web-DINO
    masks[0] = False  # and one image with none
    return masks


def heads(dtype=torch.float32):
    torch.manual_seed(3)
    dino, ibot = DINOHead(24, K, hidden_dim=32, bottleneck_dim=16), DINOHead(24, K, hidden_dim=32, bottleneck_dim=12)
    with torch.no_grad():  # trained prototype norms, as after some DINOv2 steps
        dino.last_layer.weight_g.uniform_(0.5, 3.0)
        ibot.last_layer.weight_g.uniform_(0.5, 3.0)
    dino, ibot = dino.to(dtype), ibot.to(dtype)
    return dino, ibot, copy.deepcopy(dino).requires_grad_(False), copy.deepcopy(ibot).requires_grad_(False)


def inputs():
    g = torch.Generator().manual_seed(5)
    x_glob, x_loc = torch.randn(N_G, B, 24, generator=g), torch.randn(N_L, B, 24, generator=g)
    return x_glob, x_loc, torch.randn(N_G * B, N_PATCH, 24, generator=g), make_masks()


def run_objective(objective, x_glob, x_loc, x_patch, masks, dtype=torch.float32, steps=2):
    """Two steps (softmax centers are used, then updated); the last one's losses and head gradients."""
    dino, ibot, t_dino, t_ibot = heads(dtype)
    x_glob, x_loc, x_patch = x_glob.to(dtype), x_loc.to(dtype), x_patch.to(dtype)
    out = None
    for step in range(steps):
        with torch.no_grad():
            tg, tp = t_dino.prototype_logits(x_glob), t_ibot.prototype_logits(x_patch[masks])
        out = objective(
            student_global=dino.prototype_logits(x_glob),
            student_local=dino.prototype_logits(x_loc),
            teacher_global=tg,
            student_patches=ibot.prototype_logits(x_patch[masks]),
            teacher_patches=tp,
            masks=masks,
            student_cls=x_glob,
            teacher_temp=0.05 + 0.01 * step,
        )
    out["total"].backward()
    grads = {f"{h}.{n}": p.grad for h, m in (("dino", dino), ("ibot", ibot)) for n, p in m.named_parameters()}
    return out, grads


def reference64(centering, x_glob, x_loc, x_patch, masks):
    """The same two steps in float64 on materialised logits: hand_loop (Sinkhorn) or softmax-centred targets."""
    dino, ibot, t_dino, t_ibot = heads(torch.float64)
    x_glob, x_loc, x_patch = x_glob.double(), x_loc.double(), x_patch.double()
    centers = {"dino": torch.zeros(K, dtype=torch.float64), "ibot": torch.zeros(K, dtype=torch.float64)}
    out = None
    for step in range(2):
        temp = 0.05 + 0.01 * step
        with torch.no_grad():
            tg, tp = t_dino(x_glob), t_ibot(x_patch[masks])
        sg, sl, sp = dino(x_glob), dino(x_loc), ibot(x_patch[masks])
        if centering == "sinkhorn":
            out = hand_loop(sg, sl, tg, sp, tp, masks, x_glob, temp)
        else:
            out = hand_loop(sg, sl, tg, sp, tp, masks, x_glob, temp, centers=centers)
            for name, t in (("dino", tg.reshape(-1, K)), ("ibot", tp)):
                centers[name] = 0.9 * centers[name] + 0.1 * t.mean(0)
    out["total"].backward()
    grads = {f"{h}.{n}": p.grad for h, m in (("dino", dino), ("ibot", ibot)) for n, p in m.named_parameters()}
    return out, grads


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("centering", ["sinkhorn", "softmax"])
def test_losses_and_head_grads_match_float64(centering, backend):
    x_glob, x_loc, x_patch, masks = inputs()
    kw = dict(n_global=N_G, n_local=N_L, centering=centering, dino_out_dim=K, ibot_out_dim=K, chunk=64)
    objective = WebDINOObjective(**kw, backend=backend)
    out, grads = run_objective(objective, x_glob, x_loc, x_patch, masks)
    ref, ref_grads = reference64(centering, x_glob, x_loc, x_patch, masks)
    for name in ref:
        assert_close(out[name], ref[name], atol=2e-5, rtol=1e-5, name=name)
    assert set(grads) == set(ref_grads) and "dino.last_layer.weight_g" in grads
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item()
        assert_close(g, ref_grads[name], atol=1e-4 * scale + 1e-7, rtol=1e-3, name=f"grad {name}")
    assert grads["dino.last_layer.weight_g"].abs().max() > 0  # the prototype norms are trained
    if centering == "softmax":
        assert objective.dino_center.center.abs().sum() > 0


def test_errors():
    obj = WebDINOObjective(n_global=2, n_local=1)
    x = PrototypeLogits(torch.randn(2, 3, 10), torch.randn(7, 10))
    with pytest.raises(ValueError, match="expected 1 local crops, got 2"):
        obj(student_global=x, student_local=x, teacher_global=x, teacher_temp=0.05)
    with pytest.raises(ValueError, match="takes PrototypeLogits"):
        obj(student_global=torch.randn(2, 3, 7), teacher_global=torch.randn(2, 3, 7), teacher_temp=0.05)
    with pytest.raises(ValueError, match="'centred'"):
        WebDINOObjective(centering="centred")
    with pytest.raises(ValueError, match="backend must be one of"):
        WebDINOObjective(backend="cuda")
