"""Reading files that came from elsewhere without running them: nothing in a checkpoint is unpickled unrestricted.

DCP's .metadata goes through an unpickler that allows only the classes DCP writes there (SafeFileSystemReader);
DCP's non-tensor entries and the per-rank extra_rank<r>.pt files load with torch.load(weights_only=True)
(SafeLoadPlanner, load_extra). encode_extra turns the numpy arrays of an extra state (RNG states) into tensors so
that weights_only can read them back. Anything else is refused with one UserError line, and nothing in it is run.
"""

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta

from fastvit.errors import UserError, refused_global

# What DCP (torch 2.x) pickles into .metadata: its metadata dataclasses, torch.Size, dtypes and layouts.
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.filesystem", "_StoragePrefix"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a class DCP metadata holds")


def read_dcp_metadata(path, rank=None):
    """The DCP Metadata of checkpoint folder `path` (rank's own metadata file when given), unpickled with an
    allow-list (UserError otherwise)."""
    file = Path(path) / (".metadata" if rank is None else f"__{rank}.metadata")
    try:
        with open(file, "rb") as f:
            return _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise UserError(f"{file} is missing: {path} is not a complete checkpoint; delete it") from None
    except pickle.UnpicklingError as e:
        raise UserError(f"{file} was refused, nothing in it was run ({e}); delete this checkpoint folder") from None
    except Exception as e:  # noqa: BLE001 - truncated or garbage bytes raise many types
        raise UserError(f"{file} cannot be read ({type(e).__name__}: {e}); delete this checkpoint folder") from None


class SafeFileSystemReader(dcp.FileSystemReader):
    """A FileSystemReader whose .metadata goes through the restricted unpickler."""

    def read_metadata(self, *args, **kwargs):
        metadata = read_dcp_metadata(self.path, kwargs.get("rank"))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DefaultLoadPlanner, except that non-tensor entries (saved with torch.save) load with weights_only=True."""

    def load_bytes(self, read_item, value):
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserError(f"checkpoint entry {read_item.dest_index.fqn} was refused ({e})") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def encode_extra(obj):
    """`obj` with numpy arrays as tensors, so torch.load(weights_only=True) can read it back."""
    if isinstance(obj, np.ndarray):
        values = obj.astype(np.int64) if obj.dtype.kind in "iu" else obj.copy()
        return {"__ndarray__": torch.from_numpy(values), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {k: encode_extra(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(encode_extra(v) for v in obj)
    return obj


def _decode(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__", "dtype"}:
            return obj["__ndarray__"].numpy().astype(obj["dtype"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(_decode(v) for v in obj)
    return obj


def load_extra(file):
    """An extra_rank<r>.pt file (RNG states, data position), read with weights_only=True."""
    try:
        return _decode(torch.load(file, weights_only=True))
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{file} refers to {refused_global(e)}, more than tensors and plain values: refused, nothing was run; "
            "delete this checkpoint folder (or it was written by an older fastvit: resume with that version)"
        ) from None
    except Exception as e:  # noqa: BLE001 - truncated or garbage bytes
        raise UserError(f"{file} cannot be read ({type(e).__name__}: {e}); delete this checkpoint folder") from None
