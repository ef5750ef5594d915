"""The layout planner: its static memory against what a real single-process run allocates, and the 7B plan."""

import pytest
from parallel_cases import TinyDino, reference

from fastvit.config import load_config
from fastvit.parallel.plan import GPU_TABLE, Layout, main, plan, static_memory


def planned(layout):
    model = TinyDino()
    n_head = sum(p.numel() for p in model.head.parameters())
    return static_memory(model.backbone.cfg, n_head, layout, gpu=False)


def check_within(measured, predicted, what, tol=0.10):
    for key in ("params", "grads", "optim", "teacher"):
        m, p = measured[key], predicted[key]
        assert abs(p - m) <= tol * m, f"{what} {key}: planned {p:.0f} B vs allocated {m:.0f} B ({p / m - 1:+.1%})"


def test_static_memory_matches_one_process_allocation():
    check_within(reference(steps=1)["memory"], planned(Layout(dp=1, tp=1, pp=1, ac="none", fsdp=False)), "1 process")


def test_vit7b_plan_recommends_a_fitting_layout(capsys):
    cfg = load_config("", ["model.name=vit_7b"])
    vit, rows = plan(cfg, 64, "h200", 3072)
    best = rows[0]
    assert best["fits"] and best["memory"]["total"] <= 0.9 * GPU_TABLE["h200"]["hbm"] * 1e9
    assert all(r["seconds"] >= best["seconds"] for r in rows if r["fits"])
    no_ac = [r for r in rows if r["layout"] == Layout(64, 1, 1, "none")][0]
    full = [r for r in rows if r["layout"] == Layout(64, 1, 1, "full")][0]
    assert not no_ac["fits"] and full["fits"] and full["seconds"] > no_ac["seconds"]
    assert main(["model.name=vit_7b", "gpus=64", "gpu=h200", "train.batch_size=3072"]) == 0
    text = capsys.readouterr().out
    assert "recommended: " in text and "why: " in text
    assert main(["model.name=vit_7b", "gpus=64", "gpu=tpu"]) == 2
    with pytest.raises(ValueError, match="gpu='tpu'"):
        plan(cfg, 64, "tpu", 3072)
