"""DINO / iBOT head state dicts of DINOv2 / Web-SSL checkpoints <-> fastvit.models.heads.DINOHead.

DINOv2 saves `{prefix}{dino_head|ibot_head}.mlp.{0,2,4}.{weight,bias}` and the weight-normalised last layer as
`last_layer.weight_g` [K, 1] (trained norms) and `last_layer.weight_v` [K, D] (torch.nn.utils.weight_norm), with
prefixes `teacher.`, `student.` or none, possibly inside {"model": ...}. The parametrizations form
(torch.nn.utils.parametrizations.weight_norm) names the same tensors `last_layer.parametrizations.weight.original0`
(g) and `.original1` (v); both are read. DINOHead uses DINOv2's names, so reading is prefix stripping plus checks.
"""

import torch

from fastvit.interop.native import check_state

_PARAMETRIZED = {
    "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
    "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
}


def _unwrap(state):
    for key in ("model", "state_dict"):
        while isinstance(state.get(key), dict):
            state = state[key]
    return state


def head_state_from_native(state, head="dino_head", prefix=None):
    """The DINOHead state dict {mlp.*, last_layer.weight_g, last_layer.weight_v} of `head` in a DINOv2 / Web-SSL
    checkpoint; prefix defaults to the first of "teacher.", "student.", "" that holds the head."""
    if head not in ("dino_head", "ibot_head"):
        raise ValueError(f"head must be 'dino_head' or 'ibot_head', got {head!r}")
    state = _unwrap(state)
    if prefix is None:
        found = [p for p in ("teacher.", "student.", "") if any(k.startswith(f"{p}{head}.") for k in state)]
        if not found:
            raise ValueError(f"no {head} in the checkpoint; first keys: {list(state)[:8]}")
        prefix = found[0]
    start = f"{prefix}{head}."
    out = {}
    for key, value in state.items():
        if key.startswith(start) and torch.is_tensor(value):
            key = key[len(start) :]
            out[_PARAMETRIZED.get(key, key)] = value
    for key in ("last_layer.weight_g", "last_layer.weight_v"):
        if key not in out:
            raise ValueError(f"{start}{key} missing: the last layer is not weight-normalised (got {sorted(out)[:8]})")
    g, v = out["last_layer.weight_g"], out["last_layer.weight_v"]
    if g.dim() == 1:
        g = g[:, None]  # some exports squeeze [K, 1]
    if v.dim() != 2 or g.shape != (v.shape[0], 1):
        raise ValueError(f"{start}last_layer: weight_g {tuple(g.shape)} does not fit weight_v {tuple(v.shape)}")
    out["last_layer.weight_g"] = g
    return out


def head_state_to_native(head_state, head="dino_head", prefix="teacher."):
    """A DINOHead state dict under DINOv2's names `{prefix}{head}.*` (weight_norm's weight_g / weight_v)."""
    if head not in ("dino_head", "ibot_head"):
        raise ValueError(f"head must be 'dino_head' or 'ibot_head', got {head!r}")
    missing = [k for k in ("last_layer.weight_g", "last_layer.weight_v") if k not in head_state]
    if missing:
        raise ValueError(f"not a DINOHead state dict: {missing} missing")
    return {f"{prefix}{head}.{k}": v for k, v in head_state.items()}


def load_head(head_module, state, head="dino_head", prefix=None):
    """Loads a checkpoint's head into a DINOHead strictly (a ValueError names a shape or key that differs)."""
    sd = head_state_from_native(state, head, prefix)
    check_state(head_module.state_dict(), sd, what=f"DINOHead ({head})")
    head_module.load_state_dict(sd, strict=True)
    return head_module
