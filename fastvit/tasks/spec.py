"""ObjectiveSpec: what the rest of fastvit knows of an objective, declared once in the objective's folder.

The config reads `config_cls` (its section objective.<name>) and `old_keys` (the flat keys of configs written
before the sections), checkpoint resumption reads `resume_fixed_keys`, evaluation reads `eval_module`, the loop
builds `task`. Nothing outside an objective's folder names the objective.
"""

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ObjectiveSpec:
    """name: objective.name; config_cls: the dataclass of its section objective.<name>; task: "module:Class" of
    its fastvit.train.task.Task (imported when a run builds it, so reading a config imports no model code);
    resume_fixed_keys: fields of its section a resume may not change (they shape the saved state);
    eval_module: the saved module whose backbone evaluation reads ("student", or "teacher" for an EMA teacher);
    old_keys: {flat key of objective.* before the sections: field of its section}, mapped when an old run
    folder's config.yaml is read; eval_commands: {kind: "module:main"} of its own `fastvit eval KIND ...`
    (main(argv) -> exit status), e.g. CLIP's zeroshot; min_batch_per_rank: (section) -> (n, why), the smallest
    micro-batch per rank the objective can train on and what to change instead (checked before the run starts);
    heads: "module:function" of function(cfg) -> {name: DINOHead} on the meta device, the heads its saved modules
    hold under DINOv2's names (exported with `fastvit export --heads`, loaded by model.init), or None;
    transformers: (section) -> [(width, heads)] of the transformers it trains beside the backbone (MAE decoder,
    text tower), whose LayerNorm widths and head dims the ahead-of-time compile check covers; plan_heads:
    (section) -> [(hidden, bottleneck, out)] of the projection heads (3-layer MLP + prototypes) that student and
    EMA teacher carry, the first applied to every crop's class token, which `fastvit plan` and the dry run
    count; None: the planner does not model the objective."""

    name: str
    config_cls: type
    task: str
    resume_fixed_keys: tuple[str, ...] = ()
    eval_module: str = "student"
    old_keys: dict = field(default_factory=dict)
    eval_commands: dict = field(default_factory=dict)
    min_batch_per_rank: object = lambda section: (1, "")
    heads: str | None = None
    transformers: object = lambda section: []
    plan_heads: object = None

    def task_cls(self):
        return _resolve(self.task)

    def build_heads(self, cfg):
        """{name: DINOHead} on the meta device of a saved module (see `heads`); {} for an objective without."""
        return _resolve(self.heads)(cfg) if self.heads else {}


def _resolve(target):
    """The object named by "package.module:name"."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def eval_command(kind):
    """The main(argv) of `fastvit eval KIND` declared by a registered objective, or None."""
    from fastvit.tasks import specs

    for spec in specs().values():
        if kind in spec.eval_commands:
            return _resolve(spec.eval_commands[kind])
    return None
