"""A Web-DINO configuration small enough to train a few steps in seconds on a CPU."""

from fastvit.config import load_config

TINY = [
    "model.width=64", "model.depth=2", "model.heads=2", "model.patch_size=8", "model.img_size=32",
    "data.source=builtin", "data.val_source=builtin:val", "data.num_workers=0", "data.n_local_crops=2",
    "data.global_crops_size=32", "data.local_crops_size=16",
    "objective.dino_out_dim=256", "objective.ibot_out_dim=256", "objective.head_hidden_dim=128",
    "objective.dino_bottleneck_dim=64", "objective.ibot_bottleneck_dim=64", "objective.teacher_temp_warmup_steps=2",
    "optim.warmup_steps=2", "optim.freeze_last_layer_steps=1",
    "train.batch_size=8", "train.log_every=1", "train.checkpoint_every=3", "eval.max_images=200",
]  # fmt: skip


def tiny_args(out, *extra):
    return ["demo", *TINY, f"train.out={out}", *extra]


def tiny_config(out, *extra):
    return load_config("demo", TINY + [f"train.out={out}", *extra])
