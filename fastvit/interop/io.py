"""Safe reading and writing of state-dict files: safetensors, or torch.load(weights_only=True)."""

from pathlib import Path

import torch


def load_state_file(path):
    """A flat or nested dict of tensors from .safetensors / .pth / .pt / .bin; never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def save_state_file(state, path):
    """Writes a flat dict of tensors; .safetensors by suffix, else torch.save."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, str(path))
