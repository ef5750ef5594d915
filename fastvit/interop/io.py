"""Safe reading and writing of state-dict files: safetensors, or torch.load(weights_only=True)."""

import pickle
from pathlib import Path

import torch

from fastvit.errors import UserError, refused_global


def load_state_file(path):
    """A flat or nested dict of tensors from .safetensors / .pth / .pt / .bin; never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{str(path)!r} holds more than tensors (it refers to {refused_global(e)}), so it was not loaded and "
            "nothing in it was run. "
            'If you trust the file, re-save its tensors only: python -c "import torch; '
            "sd = torch.load('IN', weights_only=False); torch.save(sd.get('model', sd), 'OUT.pth')\", "
            "or convert it to .safetensors, and pass that file"
        ) from None
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
