"""HostSyncCounter: a dispatch mode that counts the operations of a region that make the host wait for the device.

Counted, whatever the device (so a CPU run sees the same counts as a GPU one):
- value reads: aten._local_scalar_dense (tensor.item(), int(t), float(t), bool(t));
- data-dependent shapes: nonzero, masked_select, unique, boolean-mask indexing (index / index_put with a bool
  index, e.g. x[masks]), repeat_interleave without output_size;
- copies between devices that block: device -> host (the host waits for the value), and host -> device from
  memory that is not pinned or without non_blocking=True (a CPU run has none of these: check them on a GPU).
The optimizer's internals (torch.optim: e.g. AdamW reading its step counts, host tensors on a GPU) are left out.

Example:
    with HostSyncCounter() as syncs:
        train_step(...)
    assert len(syncs.events) <= 1, syncs.events
"""

import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
_DATA_DEPENDENT = {
    aten._local_scalar_dense.default: "value read",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten._unique2.default: "unique",
    aten.unique_dim.default: "unique",
    aten.unique_consecutive.default: "unique",
}
_INDEX = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_REPEAT = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}
_COPIES = {aten._to_copy.default, aten.copy_.default}


def _bool_index(args):
    return any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1])


def _blocking_copy(func, args, kwargs):
    """'device -> host' or 'host -> device (blocking)' for a copy that makes the host wait, else None."""
    if func is aten._to_copy.default:
        src, dst = args[0], kwargs.get("device") or args[0].device
        non_blocking = kwargs.get("non_blocking", False)
    else:
        dst, src = args[0].device, args[1]
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    if not torch.is_tensor(src) or src.device.type == torch.device(dst).type:
        return None
    if torch.device(dst).type == "cpu":
        return "device -> host"
    if src.device.type == "cpu" and not (non_blocking and src.is_pinned()):
        return "host -> device (blocking or not pinned)"
    return None


def _caller():
    """The innermost frame of fastvit's code on the stack ("file:line"), or None inside torch.optim."""
    stack = traceback.extract_stack()[:-3]
    if any(f"torch{os.sep}optim{os.sep}" in f.filename for f in stack):
        return None
    frames = [f for f in stack if "fastvit" in f.filename and "sync_count" not in f.filename]
    return f"{frames[-1].filename.split('fastvit')[-1]}:{frames[-1].lineno}" if frames else "?"


class HostSyncCounter(TorchDispatchMode):
    """Records (kind, op, where) for every op that synchronises the host with the device (where: the innermost
    frame of fastvit's code that led to it); see the module docstring."""

    def __init__(self):
        super().__init__()
        self.events = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _DATA_DEPENDENT.get(func)
        if kind is None and func in _INDEX and _bool_index(args):
            kind = "boolean index"
        if kind is None and func in _REPEAT and kwargs.get("output_size") is None:
            kind = "repeat_interleave without output_size"
        if kind is None and func in _COPIES:
            kind = _blocking_copy(func, args, kwargs)
        where = _caller() if kind is not None else None
        if where is not None:
            self.events.append((kind, str(func), where))
        return func(*args, **kwargs)
