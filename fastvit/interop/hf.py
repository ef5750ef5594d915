"""Native <-> Hugging Face Dinov2Model state dicts and configs.

Two HF name layouts exist and both are read; either can be written:
- "hub": the names of the released Hub files and transformers < 5 (attention.attention.query/key/value,
  attention.output.dense, mlp.weights_in = w12, mlp.weights_out = w3); transformers >= 5 renames them
  on from_pretrained, so it is the layout for files.
- "modular": the module names of transformers >= 5 (attention.q_proj/k_proj/v_proj/o_proj,
  mlp.gate_proj / up_proj = first / second half of w12, mlp.down_proj = w3), for load_state_dict.
A model with register tokens is HF's Dinov2WithRegistersModel (`embeddings.register_tokens`, the same block
names); HF always has LayerScale (a model without it exports ones).
HF resamples position embeddings by output size (interpolate_offset 0; Dinov2WithRegistersModel also
antialiases), DINOv2 by scale factor: the two agree at the checkpoint's own resolution.
"""

import re

import torch

from fastvit.models.vit import ViTConfig

_EMBED = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_BLOCK = {  # native suffix -> (hub suffix, modular suffix)
    "norm1": ("norm1", "norm1"),
    "norm2": ("norm2", "norm2"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "ls1.gamma": ("layer_scale1.lambda1", "layer_scale1.lambda1"),
    "ls2.gamma": ("layer_scale2.lambda1", "layer_scale2.lambda1"),
    "mlp.w3": ("mlp.weights_out", "mlp.down_proj"),
    "mlp.fc1": ("mlp.fc1", "mlp.fc1"),
    "mlp.fc2": ("mlp.fc2", "mlp.fc2"),
}
_QKV = {
    "hub": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    "modular": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
}
_LAYOUTS = ("hub", "modular")


def detect_layout(hf_state):
    """'hub' or 'modular' from the attention key names of an HF Dinov2 state dict."""
    keys = list(hf_state)
    if any(".attention.attention.query." in k for k in keys):
        return "hub"
    if any(".attention.q_proj." in k for k in keys):
        return "modular"
    raise ValueError(f"not a Hugging Face Dinov2 state dict; first keys: {keys[:8]}")


def _block_ids(state, prefix):
    return sorted({int(k.split(".")[1 if prefix == "blocks" else 2]) for k in state if k.startswith(prefix + ".")})


def native_to_hf(state, layout="hub"):
    """Flat native state dict (see interop.native.normalize_native) -> HF Dinov2Model state dict."""
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    col = _LAYOUTS.index(layout)
    out = {_EMBED[k]: v for k, v in state.items() if k in _EMBED}
    for i in _block_ids(state, "blocks"):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for key, value in state.items():
            if not key.startswith(src):
                continue
            rest = key[len(src) :]
            stem, leaf = rest.rsplit(".", 1)
            if stem == "attn.qkv":
                for name, part in zip(_QKV[layout], value.chunk(3, dim=0)):
                    out[f"{dst}{name}.{leaf}"] = part
            elif stem == "mlp.w12" and layout == "modular":
                gate, up = value.chunk(2, dim=0)
                out[f"{dst}mlp.gate_proj.{leaf}"], out[f"{dst}mlp.up_proj.{leaf}"] = gate, up
            elif stem == "mlp.w12":
                out[f"{dst}mlp.weights_in.{leaf}"] = value
            elif rest in _BLOCK or stem in _BLOCK:
                hf = _BLOCK[rest][col] if rest in _BLOCK else f"{_BLOCK[stem][col]}.{leaf}"
                out[dst + hf] = value
            else:
                raise ValueError(f"native key {key!r} has no Hugging Face Dinov2 counterpart")
        if f"{src}ls1.gamma" not in state:  # no LayerScale: HF multiplies by lambda1 = 1
            ref = state[f"{src}norm1.weight"]
            out[f"{dst}layer_scale1.lambda1"] = torch.ones_like(ref)
            out[f"{dst}layer_scale2.lambda1"] = torch.ones_like(ref)
    return out


def _hf_to_native_block(rest, value, layout, parts):
    """Native (suffix, tensor) for one HF block entry, or None when it is half of a split tensor."""
    col = _LAYOUTS.index(layout)
    stem, leaf = rest.rsplit(".", 1)
    if stem in _QKV[layout]:
        parts.setdefault(("attn.qkv", leaf), {})[_QKV[layout].index(stem)] = value
        return None
    if stem in ("mlp.gate_proj", "mlp.up_proj"):
        parts.setdefault(("mlp.w12", leaf), {})[0 if stem == "mlp.gate_proj" else 1] = value
        return None
    if stem == "mlp.weights_in":
        return f"mlp.w12.{leaf}", value
    for native, names in _BLOCK.items():
        if rest == names[col]:
            return native, value
        if stem == names[col]:
            return f"{native}.{leaf}", value
    raise ValueError(f"Hugging Face key {rest!r} has no native counterpart")


def hf_to_native(hf_state, drop_unit_layerscale=False):
    """HF Dinov2 state dict (either layout; a leading `dinov2.` and a classifier are dropped) -> native.
    drop_unit_layerscale: omit ls*.gamma when all ones (for models built without LayerScale)."""
    hf_state = {k.removeprefix("dinov2."): v for k, v in hf_state.items() if not k.startswith("classifier.")}
    layout = detect_layout(hf_state)
    inverse = {v: k for k, v in _EMBED.items()}
    out = {inverse[k]: v for k, v in hf_state.items() if k in inverse}
    block_key = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
    parts = {}
    for key, value in hf_state.items():
        m = block_key.match(key)
        if m is None:
            if key not in inverse:
                raise ValueError(f"Hugging Face key {key!r} has no native counterpart")
            continue
        i, rest = int(m.group(1)), m.group(2)
        got = _hf_to_native_block(rest, value, layout, parts.setdefault(i, {}))
        if got is not None:
            out[f"blocks.{i}.{got[0]}"] = got[1]
    for i, split in parts.items():
        for (stem, leaf), pieces in split.items():
            n = 3 if stem == "attn.qkv" else 2
            if sorted(pieces) != list(range(n)):
                raise ValueError(f"block {i}: incomplete {stem}.{leaf} pieces {sorted(pieces)}")
            out[f"blocks.{i}.{stem}.{leaf}"] = torch.cat([pieces[j] for j in range(n)], dim=0)
    if drop_unit_layerscale:
        ls = [k for k in out if k.endswith(("ls1.gamma", "ls2.gamma"))]
        if all(bool((out[k] == 1).all()) for k in ls):
            out = {k: v for k, v in out.items() if k not in ls}
    return out


def _mlp_ratio(cfg):
    """The integer mlp_ratio for which HF's hidden-size rule gives cfg.mlp_hidden."""
    for r in range(1, 33):
        h = int(cfg.width * r)
        if cfg.mlp == "swiglu":
            h = (int(h * 2 / 3) + 7) // 8 * 8
        if h == cfg.mlp_hidden:
            return r
    raise ValueError(f"no integer HF mlp_ratio gives {cfg.mlp} hidden {cfg.mlp_hidden} at width {cfg.width}")


def hf_config_dict(cfg: ViTConfig):
    """Dinov2Config fields (a plain dict, e.g. for config.json) describing the same network; with register tokens
    a Dinov2WithRegistersConfig's."""
    registers = {"num_register_tokens": cfg.n_registers} if cfg.n_registers else {}
    return {
        "model_type": "dinov2_with_registers" if cfg.n_registers else "dinov2",
        "architectures": ["Dinov2WithRegistersModel" if cfg.n_registers else "Dinov2Model"],
        **registers,
        "hidden_size": cfg.width,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.heads,
        "mlp_ratio": _mlp_ratio(cfg),
        "use_swiglu_ffn": cfg.mlp == "swiglu",
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "image_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "num_channels": 3,
        "qkv_bias": cfg.qkv_bias,
        "layerscale_value": 1.0 if cfg.layerscale_init is None else cfg.layerscale_init,
        "drop_path_rate": 0.0,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "use_mask_token": True,
    }


def _check_positive(key, value, kind):
    """ValueError unless a config.json field is a positive number of the right kind (not null, not 1e9 as text)."""
    if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < 2**31:
        what = "integer" if kind is int else "number"
        raise ValueError(f"config.json: {key}={value!r} is not a positive {what} below 2^31; fix the file")


def _registers(get):
    """num_register_tokens of a Dinov2WithRegistersConfig (0 for a Dinov2Config, which has none)."""
    if get("model_type", "dinov2") != "dinov2_with_registers":
        return 0
    n = get("num_register_tokens", 4)
    if n != 0:
        _check_positive("num_register_tokens", n, int)
    return n


def config_from_hf(hf_cfg, name="custom"):
    """A ViTConfig from Dinov2Config fields (dict or config object); pos-embed resampling as HF does it."""
    get = hf_cfg.get if isinstance(hf_cfg, dict) else lambda k, d=None: getattr(hf_cfg, k, d)
    for key, default in (("hidden_size", None), ("num_hidden_layers", None), ("num_attention_heads", None)):
        _check_positive(key, get(key, default), int)
    _check_positive("mlp_ratio", get("mlp_ratio", 4), int | float)
    if not get("use_swiglu_ffn", False) and get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"unsupported hidden_act {get('hidden_act')!r}; fastvit's GELU MLP is exact-erf 'gelu'")
    width, ratio = get("hidden_size"), get("mlp_ratio", 4)
    swiglu = bool(get("use_swiglu_ffn", False))
    hidden = int(width * ratio)
    if swiglu:
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    size, patch = get("image_size", 224), get("patch_size", 14)
    return ViTConfig(
        width=width,
        depth=get("num_hidden_layers"),
        heads=get("num_attention_heads"),
        mlp_hidden=hidden,
        mlp="swiglu" if swiglu else "gelu",
        patch_size=patch if isinstance(patch, int) else patch[0],
        img_size=size if isinstance(size, int) else size[0],
        layerscale_init=get("layerscale_value", 1.0),
        qkv_bias=bool(get("qkv_bias", True)),
        n_registers=_registers(get),
        interpolate_offset=0.0,
        name=name,
    )
