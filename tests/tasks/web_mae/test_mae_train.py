"""The MAE decoder's unshuffling and a short CPU Web-MAE run through the generic loop that lowers its loss."""

import json

import torch

from fastvit.config import load_config
from fastvit.data import mae_random_masking
from fastvit.tasks.web_mae.model import MAEDecoder, sincos_pos_embed_2d
from fastvit.train.loop import train


def test_decoder_puts_visible_tokens_back_in_place():
    """With identity blocks, zero mask token and positions, the output at a kept patch is its own latent."""
    dec = MAEDecoder(8, 3, 2, width=8, depth=0, heads=2)
    dec.init_weights()
    with torch.no_grad():
        dec.embed.weight.copy_(torch.eye(8))
        dec.mask_token.zero_()
        dec.pos_embed.zero_()
        dec.norm.forward = lambda x: x
        dec.pred.weight.zero_()
        dec.pred.weight[:8, :8] = torch.eye(8)
    m = mae_random_masking(2, 9, 0.5)
    latent = torch.randn(2, 1 + m["keep_idx"].shape[1], 8)
    out = dec(latent, m["restore_idx"])[..., :8]
    for b in range(2):
        for j, n in enumerate(m["keep_idx"][b].tolist()):
            assert torch.allclose(out[b, n], latent[b, 1 + j])
        assert bool((out[b][m["mask"][b]] == 0).all())
    pe = sincos_pos_embed_2d(3, 8)
    assert pe.shape == (10, 8) and bool((pe[0] == 0).all())  # CLS row
    assert torch.equal(pe[1], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))  # patch (0, 0): [sin y, cos y, sin x, cos x]


def test_short_mae_run_lowers_loss(tmp_path):
    cfg = load_config(
        "demo_mae",
        [
            f"train.out={tmp_path}",
            "train.steps=16",
            "train.batch_size=16",
            "train.log_every=4",
            "train.checkpoint_every=0",
            "model.width=64",
            "model.depth=2",
            "model.heads=2",
            "model.img_size=32",
            "data.global_crops_size=32",
            "objective.web_mae.decoder_width=32",
            "objective.web_mae.decoder_depth=1",
            "objective.web_mae.decoder_heads=2",
            "data.num_workers=0",
            "optim.warmup_steps=4",
            "optim.lr=3e-3",
        ],
    )
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 4 and all(map(lambda v: v == v, losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert (tmp_path / "checkpoints" / "step_16").is_dir()


def test_mae_masks_derive_from_seed_step_and_rank(tmp_path):
    """A step's masks come from (train.seed, step, data rank), not from a global generator's state (the default
    CUDA generator is in no checkpoint): a resumed run masks as the uninterrupted one did."""
    from fastvit.tasks.web_mae.task import WebMAETask

    small = ["model.width=32", "model.depth=1", "model.heads=2", "model.img_size=32", "data.global_crops_size=32"]
    task = WebMAETask(load_config("demo_mae", small + [f"train.out={tmp_path}"]), torch.device("cpu"))
    batch = task.synthetic_batch(2, torch.device("cpu"))

    def loss(step, rank=0, global_seed=0):
        task.data_rank = rank
        task.schedules(step, 10)
        torch.manual_seed(global_seed)
        with torch.no_grad():
            return task.losses(batch, {})["total"].item()

    assert loss(3) == loss(3, global_seed=123)
    assert loss(3) != loss(4) and loss(3) != loss(3, rank=1)
