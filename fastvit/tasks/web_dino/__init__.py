"""Web-DINO (DINOv2's objective: DINO + iBOT + KoLeo, EMA teacher): config, model, objective, task, pipelined task."""

import dataclasses

from fastvit.tasks.spec import ObjectiveSpec
from fastvit.tasks.web_dino.config import WebDINOConfig


def _min_batch_per_rank(o):
    """KoLeo compares the images of one micro-batch with each other: it needs two."""
    return (
        (2, "KoLeo compares the images of one micro-batch; or objective.web_dino.koleo_weight=0")
        if o.koleo_weight
        else (1, "")
    )


SPEC = ObjectiveSpec(
    name="web_dino",
    config_cls=WebDINOConfig,
    task="fastvit.tasks.web_dino.task:WebDINOTask",
    resume_fixed_keys=("dino_out_dim", "ibot_out_dim", "head_hidden_dim", "dino_bottleneck_dim", "ibot_bottleneck_dim"),
    eval_module="teacher",
    old_keys={f.name: f.name for f in dataclasses.fields(WebDINOConfig)},
    min_batch_per_rank=_min_batch_per_rank,
    heads="fastvit.tasks.web_dino.model:build_heads",
    plan_heads=lambda o: [
        (o.head_hidden_dim, o.dino_bottleneck_dim, o.dino_out_dim),
        (o.head_hidden_dim, o.ibot_bottleneck_dim, o.ibot_out_dim),
    ],
)
