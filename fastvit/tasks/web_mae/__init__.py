"""Web-MAE (a masked autoencoder, no teacher): config, model, objective, task."""

import dataclasses

from fastvit.tasks.spec import ObjectiveSpec
from fastvit.tasks.web_mae.config import WebMAEConfig

SPEC = ObjectiveSpec(
    name="web_mae",
    config_cls=WebMAEConfig,
    task="fastvit.tasks.web_mae.task:WebMAETask",
    resume_fixed_keys=("decoder_width", "decoder_depth", "decoder_heads"),
    old_keys={f"mae_{f.name}": f.name for f in dataclasses.fields(WebMAEConfig)},
    transformers=lambda o: [(o.decoder_width, o.decoder_heads)],
)
