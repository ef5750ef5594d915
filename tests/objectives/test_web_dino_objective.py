"""WebDINOObjective: term pairing and counts against a hand-written float64 loop; plain == chunked path."""

import copy

import pytest
import torch

from fastvit.models.heads import DINOHead
from fastvit.objectives.dino import WebDINOObjective
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


def hand_loop(sg, sl, tg, sp, tp, masks, cls, temp):
    P = sinkhorn64(tg.reshape(N_G * B, K), temp).view(N_G, B, K)
    n_terms = N_G * N_L + (N_G - 1) * N_G
    glob = sum(ce64(sg[i], P[j]).mean() for i in range(N_G) for j in range(N_G) if i != j) / n_terms
    loc = sum(ce64(sl[i], P[j]).mean() for i in range(N_L) for j in range(N_G)) / n_terms
    Pp, row, ibot = sinkhorn64(tp, temp), 0, 0.0
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


def test_terms_match_hand_written_loop():
    sg, sl, tg = torch.randn(N_G, B, K), torch.randn(N_L, B, K), torch.randn(N_G, B, K)
    masks = make_masks()
    M = int(masks.sum())
    sp, tp, cls = torch.randn(M, K), torch.randn(M, K), torch.randn(N_G, B, 12)
    out = WebDINOObjective(n_global=N_G, n_local=N_L)(sg, sl, tg, sp, tp, masks, cls, teacher_temp=0.05)
    expected = hand_loop(sg, sl, tg, sp, tp, masks, cls, 0.05)
    assert set(out) == set(expected)
    for name in expected:
        assert_close(out[name], expected[name], atol=2e-5, rtol=1e-5, name=name)


def heads():
    torch.manual_seed(3)
    dino, ibot = DINOHead(24, K, hidden_dim=32, bottleneck_dim=16), DINOHead(24, K, hidden_dim=32, bottleneck_dim=12)
    return dino, ibot, copy.deepcopy(dino).requires_grad_(False), copy.deepcopy(ibot).requires_grad_(False)


def run_objective(objective, chunked, x_glob, x_loc, x_patch, masks, steps=2):
    dino, ibot, t_dino, t_ibot = heads()
    out = None
    for step in range(steps):  # two steps: the softmax centers are used, then updated
        f = (lambda h, x: h.prototype_logits(x)) if chunked else (lambda h, x: h(x))
        with torch.no_grad():
            tg, tp = f(t_dino, x_glob), f(t_ibot, x_patch[masks])
        out = objective(
            f(dino, x_glob),
            f(dino, x_loc),
            tg,
            f(ibot, x_patch[masks]),
            tp,
            masks,
            x_glob,
            teacher_temp=0.05 + 0.01 * step,
        )
    out["total"].backward()
    grads = [p.grad for p in list(dino.parameters()) + list(ibot.parameters())]
    return out, grads


@pytest.mark.parametrize("centering", ["sinkhorn", "softmax"])
def test_chunked_path_equals_plain_path(centering):
    x_glob, x_loc, x_patch = torch.randn(N_G, B, 24), torch.randn(N_L, B, 24), torch.randn(N_G * B, N_PATCH, 24)
    masks = make_masks()
    kw = dict(n_global=N_G, n_local=N_L, centering=centering, dino_out_dim=K, ibot_out_dim=K, chunk=64)
    plain_obj, chunk_obj = WebDINOObjective(**kw), WebDINOObjective(**kw)
    plain, g_plain = run_objective(plain_obj, False, x_glob, x_loc, x_patch, masks)
    fused, g_fused = run_objective(chunk_obj, True, x_glob, x_loc, x_patch, masks)
    for name in plain:
        assert_close(fused[name], plain[name], atol=2e-5, rtol=1e-5, name=name)
    for i, (a, b) in enumerate(zip(g_fused, g_plain)):
        assert_close(a, b, atol=1e-6, rtol=1e-4, name=f"grad {i}")
    if centering == "softmax":
        assert plain_obj.dino_center.center.abs().sum() > 0
        assert_close(chunk_obj.dino_center.center, plain_obj.dino_center.center, atol=1e-6, name="dino center")
        assert_close(chunk_obj.ibot_center.center, plain_obj.ibot_center.center, atol=1e-6, name="ibot center")


def test_errors():
    obj = WebDINOObjective(n_global=2, n_local=1)
    x = torch.randn(2, 3, 10)
    with pytest.raises(ValueError, match="expected 1 local crops, got 2"):
        obj(x, x, x, None, None, None, None, 0.05)
    with pytest.raises(ValueError, match="'centred'"):
        WebDINOObjective(centering="centred")
