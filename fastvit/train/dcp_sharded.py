"""DCP planners that write and read the fused qkv / w12 rows as the shards they are (resharding on load), and a
writer that bounds the copies DCP holds while it writes.

Under tensor parallelism the rows of a fused linear sit in a tp-dependent order (fastvit.parallel.tp). The
checkpoint holds them as a (parts, n, ...) tensor in the model's own order; a rank's shard is a few contiguous
pieces of it (fastvit.parallel.tp.fused_row_chunks). These planners describe those pieces as DCP chunks: the
save planner writes one item per piece (a view of the local shard, nothing copied or gathered), the load planner
asks DCP's resharding (create_read_items_for_chunk_list) for every piece and reads straight into the views. So a
checkpoint written under any dp x tp x pp layout loads into any other, each rank touching only its own shard,
the way torch.distributed.checkpoint resharding handles plain Shard(0) tensors. Everything else goes through
DCP's default planners unchanged.

DCP's FileSystemWriter copies each item whose storage is larger than the item (a view, an FSDP2-padded shard)
and keeps those copies until the file they go to is written; with one file per rank that is up to a whole shard.
BoundedFileWriter writes a rank's items into files of at most `file_bytes` (an item larger than that alone), so
at most that much is held beside the shards.
"""

import dataclasses
import math
import queue

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import (
    DefaultSavePlanner,
    create_default_local_load_plan,
)
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import LoadPlan, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.tensor import DTensor

from fastvit.parallel.tp import canonical_size, fused_parts, fused_row_chunks
from fastvit.train.safe_load import SafeLoadPlanner

FILE_BYTES = 256 * 2**20  # a checkpoint file's tensor bytes: what DCP holds in copies at most while it writes


def _fused_entries(state_dict):
    """{fqn: (parts, tensor)} of the flattened state dict's fused tensors this rank holds."""
    out = {}
    for fqn, t in state_dict.items():
        parts = fused_parts(fqn)
        if not parts or not hasattr(t, "dim") or t.dim() < 1:
            continue
        if isinstance(t, DTensor) and t.device_mesh.get_coordinate() is None:
            continue  # a sub-mesh this rank is not part of
        out[fqn] = (parts, t)
    return out


class FusedRowsSavePlanner(DefaultSavePlanner):
    """DefaultSavePlanner, with the fused rows written as (parts, n, ...) pieces of this rank's shard."""

    def create_local_plan(self):
        plan = super().create_local_plan()
        self._views = {}  # (fqn, offsets) -> view of the local shard
        fused = _fused_entries(self.state_dict)
        items = [item for item in plan.items if item.index.fqn not in fused]
        for fqn, (parts, t) in fused.items():
            size = canonical_size(t, parts)
            local = t.to_local() if isinstance(t, DTensor) else t
            for offsets, sizes, view in fused_row_chunks(t, parts):
                self._views[(fqn, tuple(offsets))] = view
                chunk = ChunkStorageMetadata(offsets=tuple(offsets), sizes=tuple(sizes))
                data = TensorWriteData(chunk=chunk, properties=TensorProperties.create_from_tensor(local), size=size)
                index = MetadataIndex(fqn, tuple(offsets))
                items.append(WriteItem(index=index, type=WriteItemType.SHARD, tensor_data=data))
        self.plan = dataclasses.replace(plan, items=items)
        return self.plan

    def lookup_object(self, index):
        view = self._views.get((index.fqn, tuple(index.offset or ())))
        return view if view is not None else super().lookup_object(index)


class FusedRowsLoadPlanner(SafeLoadPlanner):
    """SafeLoadPlanner, with the fused rows read into (parts, n, ...) pieces of this rank's shard."""

    def create_local_plan(self):
        fused = _fused_entries(self.state_dict)
        rest = {k: v for k, v in self.state_dict.items() if k not in fused}
        plan = create_default_local_load_plan(rest, self.metadata, not self.allow_partial_load)
        self._views = {}  # fqn -> the views, by their index in the chunk list given to DCP
        items = list(plan.items)
        for fqn, (parts, t) in fused.items():
            md = self.metadata.state_dict_metadata.get(fqn)
            if md is None:
                if self.allow_partial_load:
                    continue
                raise RuntimeError(f"Missing key in checkpoint state_dict: {fqn}.")
            if md.size != canonical_size(t, parts):
                raise ValueError(f"Size mismatch between saved {md.size} and current {canonical_size(t, parts)}: {fqn}")
            pieces = fused_row_chunks(t, parts)
            self._views[fqn] = [view for _, _, view in pieces]
            chunks = [ChunkStorageMetadata(offsets=tuple(o), sizes=tuple(s)) for o, s, _ in pieces]
            items += create_read_items_for_chunk_list(fqn, md, chunks)
        return LoadPlan(items)

    def lookup_tensor(self, index):
        views = self._views.get(index.fqn)
        return views[index.index] if views is not None else super().lookup_tensor(index)


def _item_bytes(item):
    if item.tensor_data is None:
        return 0
    return math.prod(item.tensor_data.chunk.sizes) * item.tensor_data.properties.dtype.itemsize


def file_buckets(items, file_bytes):
    """Items split in order into lists of at most file_bytes tensor bytes (one larger item alone)."""
    buckets, size = [[]], 0
    for item in items:
        n = _item_bytes(item)
        if buckets[-1] and size + n > file_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(item)
        size += n
    return buckets


class BoundedFileWriter(dcp.FileSystemWriter):
    """FileSystemWriter writing a rank's items into files __<rank>_<k>.distcp of at most file_bytes each."""

    def __init__(self, path, file_bytes=FILE_BYTES, **kw):
        super().__init__(path, **kw)
        self.file_bytes = file_bytes

    def write_data(self, plan, planner):
        files = queue.Queue()
        for k, bucket in enumerate(file_buckets(plan.items, self.file_bytes)):
            name = f"{plan.storage_data.prefix}{k}.distcp"
            files.put((self.fs.concat_path(self.path, name), name, bucket))
        return self._write_data(planner, files)
