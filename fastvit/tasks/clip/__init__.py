"""The CLIP baseline (ViT image tower + causal text tower, InfoNCE or SigLIP): config, model, objective, task."""

import dataclasses

from fastvit.tasks.clip.config import CLIPConfig
from fastvit.tasks.spec import ObjectiveSpec

SPEC = ObjectiveSpec(
    name="clip",
    config_cls=CLIPConfig,
    task="fastvit.tasks.clip.task:CLIPTask",
    resume_fixed_keys=("embed_dim", "text_width", "text_depth", "text_heads", "context_length", "tokenizer"),
    old_keys={f"clip_{f.name}": f.name for f in dataclasses.fields(CLIPConfig)},
    eval_commands={"zeroshot": "fastvit.tasks.clip.zeroshot:main"},
    transformers=lambda o: [(o.text_width, o.text_heads)],
)
