"""The typed root config: one dataclass per section, YAML recipes, dotted key=value overrides.

    cfg = load_config("demo", ["model.name=vit_b", "train.steps=100"])
    write_config(cfg, "runs/x/config.yaml")

A recipe is a YAML mapping of section -> field -> value (a partial config). Overrides are parsed
as YAML scalars and checked against the field's type; an unknown key is a ValueError naming the
closest valid key.
"""

import dataclasses
import difflib
import functools
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from fastvit.errors import UserError
from fastvit.fileio import write_atomic
from fastvit.parallel.checkpointing import MODES as CHECKPOINTING_MODES

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass(kw_only=True)
class ModelConfig:
    name: str = "vit_s"  # vit_s ... vit_7b (fastvit.models.vit size table)
    patch_size: int = 14
    img_size: int = 224  # resolution the position embedding is stored at
    width: int = 0  # 0: the size table's; set width/depth/heads for a custom size
    depth: int = 0
    heads: int = 0
    n_registers: int = 0
    layerscale_init: float | None = 1e-5  # None disables LayerScale
    drop_path: float = 0.0
    mlp: Literal["", "swiglu", "gelu"] = ""  # "": the size table's MLP kind
    qkv_bias: bool = True
    attn_backend: str = "auto"
    # Weights a new run starts from (a resumed run reads its own checkpoint): a fastvit run or checkpoint folder,
    # a Web-SSL / DINOv2 .pth / .safetensors (with its DINO / iBOT heads, if it holds them) or an HF Dinov2 folder.
    init: str = ""


@dataclass(kw_only=True)
class DataConfig:
    source: str = "builtin"  # builtin | imagefolder:PATH | webdataset:PATTERN
    val_source: str = "builtin:val"  # labelled data for kNN / linear evaluation
    loader: Literal["auto", "torch", "dali"] = "auto"
    num_workers: int = 2
    n_global_crops: int = 2
    n_local_crops: int = 8
    global_crops_size: int = 224
    local_crops_size: int = 98
    global_crops_scale: tuple[float, float] = (0.32, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.32)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    mask_ratio: tuple[float, float] = (0.1, 0.5)  # iBOT block masks, ratio drawn per image
    mask_probability: float = 0.5  # share of global crops that get masked
    captions: str = ""  # CLIP: a captions file for an image folder ("" = builtin class captions / shard txt+json)
    max_pixels: int = 90_000_000  # larger images are skipped (and counted) before decoding: decompression bombs
    max_sample_bytes: int = 64 << 20  # larger files / tar members are skipped (and counted) before reading
    # webdataset shards (a stream, fastvit/data/stream.py): samples mixed per loader worker, shards read at once
    shuffle_buffer: int = 1000
    shard_interleave: int = 4
    # the DALI loader makes whole batches this many - 1 ahead on a thread, overlapping the step (1: on demand)
    dali_prefetch: int = 2


@functools.cache
def _objective_config_cls(objectives):
    """The dataclass of the objective section: `name` (one of the registered objectives, the first by default)
    and one field per objective holding its own section (objective.<name>.<field>), from fastvit.tasks' registry;
    `section` is the chosen objective's (getattr(objective, objective.name))."""
    from fastvit.tasks import specs

    registered = specs()
    names = tuple(registered)
    fields = [("name", Literal[names], field(default=names[0]))]
    fields += [(n, spec.config_cls, field(default_factory=spec.config_cls)) for n, spec in registered.items()]
    section = property(lambda self: getattr(self, self.name))
    namespace = {"__module__": __name__, "section": section}
    return dataclasses.make_dataclass("ObjectiveConfig", fields, kw_only=True, namespace=namespace)


def objective_config_cls():
    """The objective section's class of the objectives registered now."""
    from fastvit import tasks

    return _objective_config_cls(tuple(tasks.OBJECTIVES))


def __getattr__(name):
    """fastvit.config.ObjectiveConfig is objective_config_cls() (pickle finds the class here)."""
    if name == "ObjectiveConfig":
        return objective_config_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3.5e-4  # peak lr at the recipe's batch size
    min_lr: float = 1e-6
    warmup_steps: int = 100000
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 3.0  # 0 disables clipping
    layer_decay: float = 1.0  # layer-wise lr decay; 1.0 disables
    patch_embed_lr_mult: float = 0.2
    freeze_last_layer_steps: int = 1250
    grad_accum: int = 1


@dataclass(kw_only=True)
class ParallelConfig:
    dp: int = -1  # -1: whatever the world size leaves after tp * pp
    tp: int = 1
    pp: int = 1
    data_parallel: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: Literal[CHECKPOINTING_MODES] = "none"
    compile: bool = False
    sequence_parallel: bool = False  # with tp > 1: norms and residuals on 1/tp of the tokens each
    pp_schedule: Literal["1f1b", "interleaved", "gpipe"] = "1f1b"
    virtual_stages: int = 1  # pipeline stages per pp rank; interleaved needs 2 or more
    pp_microbatches: int = 0  # microbatches per pipeline step; 0: 4 x pp (as `fastvit plan` assumes)
    # process-group timeout: longer than any phase in which one rank can keep the others waiting in a collective
    # (start-up compile, a checkpoint's write, evaluation); NCCL's own default is 10 minutes
    timeout_s: int = 1800


@dataclass(kw_only=True)
class TrainConfig:
    out: str = "runs/demo"
    steps: int = 1000
    batch_size: int = 64  # global, over all ranks and accumulation steps
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_bad_steps: int = 5  # consecutive skipped steps (non-finite, or an exploding gradient norm) before the run stops
    # a step whose gradient norm is over this x the running norm of the accepted steps is skipped (0 disables)
    max_grad_norm_jump: float = 1000.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPUs, fp32 on CPUs
    # checkpoints staged and written while training continues; "auto": on for GPUs, off on CPUs
    # (fastvit.train.async_checkpoint says why)
    async_checkpoint: bool | Literal["auto"] = "auto"
    eval_every: int = 0  # kNN of the EMA teacher every N steps (knn_top1 in metrics.jsonl, percent); 0 disables


@dataclass(kw_only=True)
class EvalConfig:
    train_source: str = ""  # labelled data the kNN / linear probe fits on; "" = data.source
    features: Literal["cls", "cls_patch"] = "cls"
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_epochs: int = 10
    linear_lr: float = 1e-3
    batch_size: int = 256
    max_images: int = 0  # per split; 0: all. A subset is seeded by train.seed and class-balanced when labels are known


@dataclass(kw_only=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: typing.Any = field(default_factory=lambda: objective_config_cls()())  # see _objective_config_cls
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def valid_keys(cfg=None):
    """All dotted keys of the config, e.g. ['model.name', ..., 'objective.web_mae.mask_ratio', ...]."""
    cfg = cfg if cfg is not None else Config()

    def leaves(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from leaves(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    return list(leaves(cfg, ""))


def get_key(cfg, key):
    """The value of the dotted `key` (e.g. "objective.web_mae.mask_ratio")."""
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg


def _field_types(section_obj):
    hints = typing.get_type_hints(type(section_obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(section_obj)}


def _coerce(key, value, tp):
    """Checks `value` (already YAML-parsed) against the annotation `tp`; returns the typed value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0])
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ValueError(f"{key}={_show(value)} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{key} expects a list of {len(args)} values like [0.1, 0.5], got {_show(value)}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} expects true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} expects an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} expects a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if value is None or isinstance(value, list | dict):
            raise ValueError(f"{key} expects a string, got {_show(value)}")
        return str(value)
    raise AssertionError(f"unsupported config annotation {tp} for {key}")


def _show(value):
    """A bounded repr for messages: a value built by YAML aliases can be huge (or deeply shared)."""
    return reprlib.repr(value)


# More aliases than a config needs is a "billion laughs" document: refused before it is built.
MAX_YAML_ALIASES = 100


def safe_yaml(text, origin):
    """yaml.safe_load of `text`, refusing more than MAX_YAML_ALIASES aliases (UserError naming `origin`)."""
    aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
    if aliases > MAX_YAML_ALIASES:
        raise UserError(f"{origin} uses {aliases} YAML aliases (at most {MAX_YAML_ALIASES}); write the values out")
    return yaml.safe_load(text)


def _unknown_key(key, keys):
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid sections: {sorted({k.split('.')[0] for k in keys})}"
    return ValueError(f"unknown config key {key!r}{hint}")


def old_keys():
    """{key of a config written before the objective sections: its key now}, e.g. objective.mae_mask_ratio ->
    objective.web_mae.mask_ratio (each objective's ObjectiveSpec.old_keys)."""
    from fastvit.tasks import specs

    return {f"objective.{old}": f"objective.{n}.{new}" for n, s in specs().items() for old, new in s.old_keys.items()}


def set_key(cfg, key, value, *, map_old_keys=False):
    """Sets the dotted `key` to `value` (a Python value), type-checked; returns cfg. A key of the flat objective
    section of older versions is mapped to its new key with map_old_keys (an old run folder's config.yaml), and
    refused with a line naming the new key otherwise."""
    keys = valid_keys(cfg)
    if key not in keys:
        renamed = old_keys().get(key)
        if renamed is None:
            raise _unknown_key(key, keys)
        if not map_old_keys:
            raise ValueError(f"config key {key!r} is now {renamed!r}; use {renamed}=...")
        key = renamed
    path, _, name = key.rpartition(".")
    section = get_key(cfg, path)
    setattr(section, name, _coerce(key, value, _field_types(section)[name]))
    return cfg


def apply_overrides(cfg, overrides):
    """Applies dotted `key=value` strings; values are parsed as YAML scalars (1e-4, true, [0.1, 0.5])."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. train.steps=100)")
        try:
            value = safe_yaml(raw, f"override {key}") if raw != "" else ""
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: cannot parse the value ({e})") from e
        set_key(cfg, key.strip(), value)
    return cfg


def apply_mapping(cfg, mapping, origin="recipe", *, map_old_keys=False):
    """Applies a nested {section: {field: value}} mapping (a recipe or a saved config); an objective's section
    nests one level deeper (objective: {name: web_mae, web_mae: {mask_ratio: 0.75}})."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{origin}: expected a mapping of sections, got {type(mapping).__name__}")

    def apply(obj, fields, prefix):
        if not isinstance(fields, dict):
            raise ValueError(f"{origin}: section {prefix[:-1]!r} must be a mapping of field: value")
        for name, value in fields.items():
            key = f"{prefix}{name}"
            if isinstance(value, dict) and dataclasses.is_dataclass(getattr(obj, str(name), None)):
                apply(getattr(obj, name), value, f"{key}.")
            else:
                set_key(cfg, key, value, map_old_keys=map_old_keys)

    for section, fields in mapping.items():
        if not isinstance(fields, dict):
            raise ValueError(f"{origin}: section {section!r} must be a mapping of field: value")
        apply(getattr(cfg, str(section), None), fields, f"{section}.")
    return cfg


def recipe_names():
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(recipe):
    """A shipped recipe name (demo, web_dino_vit7b, ...) or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"config file {recipe!r} does not exist")
        return path
    path = RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(recipe, recipe_names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown recipe {recipe!r}; {hint}shipped recipes: {', '.join(recipe_names())}")
    return path


def _read_yaml(path):
    """The YAML document of a recipe or config file; UserError naming the file and line when it does not parse."""
    try:
        return safe_yaml(Path(path).read_text(), str(path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}:{where} is not valid YAML ({problem}); fix the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path} cannot be read ({e})") from None


# (key, smallest valid value, what the key means at its bounds): checked after every load.
_MINIMUMS = (
    ("model.patch_size", 1, ""),
    ("model.img_size", 1, ""),
    ("model.width", 0, "0 takes the size table's"),
    ("model.depth", 0, "0 takes the size table's"),
    ("model.heads", 0, "0 takes the size table's"),
    ("model.n_registers", 0, ""),
    ("data.num_workers", 0, "0 decodes in the training process"),
    ("data.n_global_crops", 1, ""),
    ("data.n_local_crops", 0, ""),
    ("data.global_crops_size", 1, ""),
    ("data.local_crops_size", 1, ""),
    ("data.max_pixels", 1, ""),
    ("data.max_sample_bytes", 1, ""),
    ("data.shuffle_buffer", 1, "1 keeps each group's interleaved order"),
    ("data.shard_interleave", 1, "1 reads one shard at a time per worker"),
    ("optim.grad_accum", 1, "1 accumulates nothing"),
    ("parallel.tp", 1, ""),
    ("parallel.pp", 1, ""),
    ("parallel.virtual_stages", 1, ""),
    ("parallel.pp_microbatches", 0, "0 takes 4 x pp"),
    ("parallel.timeout_s", 1, ""),
    ("train.steps", 0, "0 writes the initial checkpoint only"),
    ("train.batch_size", 1, ""),
    ("train.log_every", 1, "1 logs every step"),
    ("train.checkpoint_every", 0, "0 writes only the final checkpoint"),
    ("train.keep_checkpoints", 1, "a run keeps at least its newest checkpoint"),
    ("train.max_bad_steps", 1, ""),
    ("train.eval_every", 0, "0 disables"),
    ("eval.knn_k", 1, ""),
    ("eval.linear_epochs", 1, ""),
    ("eval.batch_size", 1, ""),
    ("eval.max_images", 0, "0 takes all images"),
)


def _check_minimums(cfg, sections):
    for key, low, meaning in _MINIMUMS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if section in sections and value < low:
            hint = f" ({meaning})" if meaning else ""
            raise UserError(f"{key}={value} is out of range: it must be {low} or more{hint}")


def validate_eval(cfg):
    """UserError naming the first eval.* key out of range (also checked by `fastvit eval`); returns cfg."""
    _check_minimums(cfg, ("eval",))
    for key in ("knn_temperature", "linear_lr"):
        value = getattr(cfg.eval, key)
        if not value > 0 or value == float("inf"):
            raise UserError(f"eval.{key}={value} is out of range: it must be a finite number above 0")
    return cfg


def validate(cfg):
    """UserError naming the first key whose value is out of range; returns cfg."""
    _check_minimums(cfg, ("model", "data", "optim", "parallel", "train"))
    validate_eval(cfg)
    if cfg.train.seed < 0:
        raise UserError(f"train.seed={cfg.train.seed} is out of range: it must be 0 or more")
    for key in ("global_crops_size", "local_crops_size") if cfg.data.n_local_crops else ("global_crops_size",):
        if getattr(cfg.data, key) < cfg.model.patch_size:
            raise UserError(
                f"data.{key}={getattr(cfg.data, key)} is out of range: a crop must hold at least one "
                f"model.patch_size={cfg.model.patch_size} patch"
            )
    if cfg.parallel.dp != -1 and cfg.parallel.dp < 1:
        raise UserError(f"parallel.dp={cfg.parallel.dp} is out of range: it must be 1 or more, or -1 (what is left)")
    if cfg.train.max_grad_norm_jump < 0 or 0 < cfg.train.max_grad_norm_jump <= 1:
        raise UserError(f"train.max_grad_norm_jump={cfg.train.max_grad_norm_jump}: use a factor > 1, or 0 to disable")
    if not 0.0 <= cfg.model.drop_path < 1.0:
        raise UserError(f"model.drop_path={cfg.model.drop_path} is out of range: it must be in [0, 1)")
    return cfg


def load_config(recipe="demo", overrides=()):
    """Config defaults <- recipe (name or YAML file) <- dotted overrides, validated."""
    cfg = Config()
    if recipe:
        path = recipe_path(recipe)
        apply_mapping(cfg, _read_yaml(path), origin=str(path.name))
    return validate(apply_overrides(cfg, overrides))


def to_dict(cfg):
    """Plain nested dict (tuples as lists) suitable for YAML/JSON."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return list(v) if isinstance(v, tuple) else v

    return plain(dataclasses.asdict(cfg))


def write_config(cfg, path):
    """Writes the resolved config as YAML, atomically (a crash leaves the old file or the new one)."""
    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def read_config(path):
    """A config written by write_config (e.g. a run folder's config.yaml); not range-checked, so a folder written
    before the checks (e.g. with train.keep_checkpoints=0) can still be evaluated; the flat objective keys of
    older versions map to their objective's section."""
    return apply_mapping(Config(), _read_yaml(path), origin=str(path), map_old_keys=True)
