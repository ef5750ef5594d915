"""Safe reading and writing of state-dict files: safetensors, or torch.load(weights_only=True)."""

import json
import math
import pickle
import zipfile
from pathlib import Path

import torch

from fastvit.errors import UserError, refused_global


def load_state_file(path):
    """A flat or nested dict of tensors from .safetensors / .pth / .pt / .bin; never unpickles code. torch.save's
    zip archives are memory-mapped: a tensor's bytes are read when it is used (the ranks of a node share the
    pages), so a rank that copies only its shards reads only those of the tensors it takes as they are."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_safetensors(path)
        return load_file(str(path), device="cpu")
    archive = zipfile.is_zipfile(path)
    if not archive and not _legacy_torch_file(path):
        raise UserError(f"{str(path)!r} is not a torch checkpoint (neither torch.save's zip archive nor a pickle)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=archive)
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


def _legacy_torch_file(path):
    """torch.save's format before its zip archives starts with a pickle (protocol 2 or later: byte 0x80)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


# Bytes per element of the safetensors dtypes (the format's dtype names).
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
_DTYPE_BYTES |= {"I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


def check_safetensors(path):
    """UserError unless the header of a .safetensors file is a JSON object whose tensors' shapes and byte ranges
    fit the file: checked before anything is allocated (a crafted header can declare 2^62 bytes)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(MAX_HEADER, size - 8):
            raise UserError(f"{str(path)!r} is not a safetensors file (its header length {n} does not fit the file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            header = None
    if not isinstance(header, dict):
        raise UserError(f"{str(path)!r} is not a safetensors file (its header is not a JSON object)")
    data = size - 8 - n
    for name, entry in header.items():
        if name != "__metadata__" and not _entry_fits(entry, data):
            raise UserError(f"{str(path)!r}: tensor {name[:80]!r} has a shape or byte range that does not fit the file")


def _entry_fits(entry, data_bytes):
    if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPE_BYTES:
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return False
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return False
    begin, end = offsets
    return 0 <= begin <= end <= data_bytes and math.prod(shape) * _DTYPE_BYTES[entry["dtype"]] == end - begin


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
