"""One host sync per optimizer step, counted over whole train_steps by a dispatch mode (fastvit.sync_count): value
reads, data-dependent shapes and blocking copies, wherever they are (models, objectives, ops, the step)."""

import pytest
import torch
from tiny import TINY

from fastvit.config import load_config
from fastvit.sync_count import HostSyncCounter
from fastvit.testing import run_ranks
from fastvit.train.loop import build_training
from fastvit.train.step import autocast_for, to_device, train_step

SMALL_VIT = ["model.width=64", "model.depth=2", "model.heads=2", "model.patch_size=8", "model.img_size=32"]
CASES = {
    "web_dino_sinkhorn": ["demo", TINY + ["model.drop_path=0.3", "data.mask_probability=1.0"]],
    "web_dino_softmax": ["demo", TINY + ["model.drop_path=0.3", "objective.web_dino.centering=softmax"]],
    "web_mae": ["demo_mae", SMALL_VIT + ["data.global_crops_size=32", "objective.web_mae.decoder_width=32"]],
    "clip": [
        "demo_clip",
        SMALL_VIT
        + ["data.global_crops_size=32", "objective.clip.text_width=32", "objective.clip.text_depth=1"]
        + ["objective.clip.text_heads=2", "objective.clip.embed_dim=16"],
    ],
}


def _count_syncs(case, out, steps=2, extra=()):
    recipe, overrides = CASES[case]
    cfg = load_config(recipe, overrides + [f"train.out={out}", "train.batch_size=4", "data.num_workers=0", *extra])
    run = build_training(cfg)
    loader = run.task.build_loader(batch_size=4, rank=0, world_size=1, device=run.device)
    batch = to_device(next(iter(loader)), run.device)  # the loader's own batch: its host-side mask metadata
    batches = iter(lambda: batch, None)
    autocast = autocast_for(cfg, run.device)

    def step(s):
        return train_step(run.task, run.optimizer, batches, step=s, total=10, cfg_optim=cfg.optim, autocast=autocast)

    assert step(0).finite  # warm-up: lazily built things may read once
    with HostSyncCounter() as syncs:
        assert all(step(s).finite for s in range(1, 1 + steps))
    return syncs.events, steps


@pytest.mark.parametrize("case", sorted(CASES))
def test_at_most_one_host_sync_per_step(tmp_path, case):
    events, steps = _count_syncs(case, tmp_path)
    assert len(events) <= steps, sorted(set(events))


def _one_rank(rank, world_size, out):
    return _count_syncs("web_dino_sinkhorn", out)


def test_sinkhorn_across_ranks_reads_no_count(tmp_path):
    """Under torch.distributed (one gloo rank) Sinkhorn all-reduces the row count and keeps it on the device."""
    ((events, steps),) = run_ranks(_one_rank, 1, str(tmp_path))
    assert len(events) <= steps, sorted(set(events))


def _pipelined_rank(rank, world_size, out):
    torch.set_num_threads(1)
    return _count_syncs("web_dino_sinkhorn", out, extra=("parallel.pp=2", "parallel.pp_microbatches=2"))


@pytest.mark.multirank
def test_pipelined_web_dino_at_most_one_host_sync_per_step(tmp_path):
    """parallel.pp=2 on two gloo ranks (1F1B, 2 microbatches, iBOT on every image, drop path): each rank's
    whole train_step (teacher pipeline, student schedule, per-microbatch iBOT rows, losses) counted on that rank."""
    for rank, (events, steps) in enumerate(run_ranks(_pipelined_rank, 2, str(tmp_path))):
        assert len(events) <= steps, (rank, sorted(set(events)))


def test_the_counter_sees_each_kind_of_sync():
    x, m = torch.randn(4, 3), torch.tensor([True, False, True, False])
    with HostSyncCounter() as syncs:
        x[m]
        m.nonzero()
        int(x.sum())
        torch.repeat_interleave(torch.tensor([1, 2]))
        torch.repeat_interleave(torch.tensor([1, 2]), output_size=3)  # static: not counted
        x.index_select(0, torch.tensor([0, 2]))  # not counted
    kinds = [k for k, _, _ in syncs.events]
    assert kinds == ["boolean index", "nonzero", "value read", "repeat_interleave without output_size"], kinds
