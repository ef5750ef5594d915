"""Web-SSL / DINOv2 native state dicts: normalising their key variants, inferring the architecture,
and loading them into a VisionTransformer with strict shape checks.

Accepted variants: flat `blocks.i.*`, chunked `blocks.c.i.*` (block_chunks > 1; i is the global block
index), wrappers {"model": ...} / {"teacher": ...} / {"state_dict": ...}, and prefixes
`teacher.backbone.`, `student.backbone.`, `backbone.`, `module.` (heads and other entries are dropped).
"""

import re

import torch

from fastvit.models.vit import VIT_SIZES, ViTConfig

_PREFIXES = ("teacher.backbone.", "backbone.", "student.backbone.", "module.", "")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


def _unwrap(state):
    for key in ("model", "teacher", "state_dict"):
        while isinstance(state.get(key), dict):
            state = state[key]
    return state


def normalize_native(state, prefix=None):
    """Flat native backbone state dict {"cls_token": ..., "blocks.0.norm1.weight": ...} from any variant."""
    state = _unwrap(state)
    if prefix is None:
        found = [p for p in _PREFIXES if f"{p}cls_token" in state]
        if not found:
            raise ValueError(f"no ViT backbone found (no '*cls_token' key); first keys: {list(state)[:8]}")
        prefix = found[0]
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix) or not torch.is_tensor(value):
            continue
        key = key[len(prefix) :]
        m = _CHUNKED.match(key)
        out[f"blocks.{m.group(2)}.{m.group(3)}" if m else key] = value
    return out


def depth_of(state):
    ids = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    if ids != set(range(len(ids))):
        raise ValueError(f"block indices are not contiguous from 0: {sorted(ids)}")
    return len(ids)


def infer_config(state, name=None, heads=None):
    """A ViTConfig matching a normalised native state dict. Heads cannot be read from weights: they come
    from `heads`, the size-table row `name`, or the unique row with this width and depth."""
    width = state["cls_token"].shape[-1]
    depth = depth_of(state)
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    swiglu = "blocks.0.mlp.w12.weight" in state
    hidden = state["blocks.0.mlp.w12.weight"].shape[0] // 2 if swiglu else state["blocks.0.mlp.fc1.weight"].shape[0]
    if heads is None:
        rows = [name] if name else [n for n, r in VIT_SIZES.items() if (r["width"], r["depth"]) == (width, depth)]
        if not rows:
            raise ValueError(f"no size-table model has width {width} and depth {depth}; pass the model name or heads")
        if name is not None and name not in VIT_SIZES:
            raise ValueError(f"unknown model {name!r}; choose one of {sorted(VIT_SIZES)}")
        heads = VIT_SIZES[rows[0]]["heads"]
        name = rows[0]
    regs = state.get("register_tokens")
    return ViTConfig(
        width=width,
        depth=depth,
        heads=heads,
        mlp_hidden=hidden,
        mlp="swiglu" if swiglu else "gelu",
        patch_size=patch,
        img_size=grid * patch,
        n_registers=0 if regs is None else regs.shape[1],
        layerscale_init=1e-5 if "blocks.0.ls1.gamma" in state else None,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        name=name or "custom",
    )


def check_state(expected, state, what="model"):
    """ValueError naming the first key (in `expected` order) whose shape differs, then missing and
    unexpected keys. expected: a state dict or {key: shape}."""
    for key, ref in expected.items():
        ref_shape = tuple(ref.shape) if torch.is_tensor(ref) else tuple(ref)
        if key in state and tuple(state[key].shape) != ref_shape:
            raise ValueError(
                f"checkpoint key {key!r} has shape {tuple(state[key].shape)} but the {what} expects {ref_shape}"
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the {what}: missing keys {missing[:8]}, unexpected {unexpected[:8]}"
        )


def load_native(model, state, prefix=None):
    """Loads a native (any variant) state dict into a VisionTransformer, strictly; returns the model."""
    state = normalize_native(state, prefix)
    check_state(model.state_dict(), state, what=f"model {model.cfg.name}")
    model.load_state_dict(state, strict=True, assign=model.pos_embed.is_meta)  # meta: adopt the tensors
    return model
