"""Asynchronous checkpoints (train.async_checkpoint): stage, then write while training continues.

save() copies this rank's shards to host memory (pinned on GPUs, the buffers kept from one save to the next,
as torchtitan's async mode and DCP's async_save stage them), then a writer thread runs the ordinary
save_checkpoint on the copy: DCP files, digests, manifest, rename and `latest` in that order, so a crash (even
SIGKILL) during the write leaves the previous checkpoint as `latest`. The writer's collectives (DCP's plan
exchange, barriers) go over a gloo group of their own, never the training group. The next save, the end of
the run and a stop signal wait() for the write in flight; an error of the write surfaces there.

The copy costs one shard of host memory and, on a CPU, the writer's CPU time comes out of the step's
(measured: benchmarks/checkpoint_overlap.py).
"""

import threading

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from fastvit.train import checkpoint as ckpt


def async_default(setting, device):
    """train.async_checkpoint: "auto" is on for GPUs (the copy to pinned memory is a DMA, the write costs the
    step nothing) and off on CPUs (the writer thread competes with the step for the same cores and the copy
    holds a second shard in the memory training uses)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


class AsyncCheckpointer:
    def __init__(self):
        self._group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self._thread = self._error = None
        self._buffers = {}  # id-free key (path in the state dict) -> host buffer, reused from save to save

    def _stage(self, node, key=""):
        if isinstance(node, dict):
            return {k: self._stage(v, f"{key}/{k}") for k, v in node.items()}
        if isinstance(node, list | tuple):
            return type(node)(self._stage(v, f"{key}/{i}") for i, v in enumerate(node))
        if not torch.is_tensor(node):
            return node
        local = node.to_local() if isinstance(node, DTensor) else node
        buf = self._buffers.get(key)
        if buf is None or buf.shape != local.shape or buf.dtype != local.dtype:
            buf = torch.empty(local.shape, dtype=local.dtype, pin_memory=local.is_cuda)
            self._buffers[key] = buf
        buf.copy_(local.detach(), non_blocking=local.is_cuda)
        if not isinstance(node, DTensor):
            return buf
        return DTensor.from_local(
            buf, node.device_mesh, node.placements, run_check=False, shape=node.shape, stride=node.stride()
        )

    def save(self, run_dir, step, state, extra, **kw):
        """Stages `state` and starts writing it (save_checkpoint's arguments); returns the final folder's path."""
        self.wait()
        staged = self._stage(state)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the copies to pinned memory are complete before the writer reads them
        self._thread = threading.Thread(
            target=self._write, args=(run_dir, step, staged, extra), kwargs=kw, name="fastvit-checkpoint"
        )
        self._thread.start()
        return ckpt.checkpoint_dir(run_dir) / f"step_{step}"

    def _write(self, *args, **kw):
        try:
            ckpt.save_checkpoint(*args, group=self._group, **kw)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread at wait()
            self._error = e

    def wait(self):
        """Blocks until the write in flight (if any) is complete; raises its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @property
    def in_flight(self):
        return self._thread is not None and self._thread.is_alive()
