"""The torch loader over the shard stream: each DataLoader worker is one slot of `fastvit.data.stream`, reads its
shards, decodes, draws the crop table and runs the multi-crop collate on whole batches.

Exact resume: every batch carries its worker's stream state after it; the loader keeps the state of the last
batch it handed to the training loop from each worker (not what the DataLoader prefetched) and which worker is
next (torch's DataLoader takes batches round-robin from its workers). `state_dict()` between steps is therefore
the exact position; a resume restarts each worker at its group in flight and rotates the round-robin. This is
torchdata's StatefulDataLoader idea (state travels with the batch), written here because the position must also
be re-laid over another number of ranks or workers (`load_state_dict(..., all_ranks=...)`).
"""

import functools
import logging
import os

import torch

from fastvit.data.decode import DecodeError
from fastvit.data.loader import Sample, exit_with_process
from fastvit.data.stream import ShardStream, copy_state, fresh_slot, global_position, repeat_bound

log = logging.getLogger(__name__)


def stream_sample(item, image=None, params=None) -> Sample:
    """The Sample of a stream item (its caption "" when the shard has none for it)."""
    i = item["index"]
    return Sample(image, params, item["label"], item["epoch"], i, 0, i, caption=item["caption"] or "")


class StreamBatches(torch.utils.data.IterableDataset):
    """Batches of one rank's slots; in a DataLoader worker k it plays slot (k + rotate) % workers."""

    def __init__(self, loader, rotate: int):
        self.shards, self.layout, self.offset = loader.shards, loader.layout, loader.offset
        self.slot_states, self.rotate = [copy_state(s) for s in loader.slots], rotate
        self.dataset, self.collate, self.batch_size = loader.dataset, loader.collate, loader.batch_size

    def stream(self, w: int) -> ShardStream:
        L = self.layout
        return ShardStream(
            self.shards,
            seed=L["seed"],
            slot=L["rank"] * L["workers"] + w,
            slots=L["world_size"] * L["workers"],
            interleave=L["interleave"],
            buffer=L["buffer"],
            offset=self.offset,
            max_sample_bytes=L["max_sample_bytes"],
        )

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w = ((info.id if info else 0) + self.rotate) % self.layout["workers"]
        stream = self.stream(w)
        reported = (0, 0)
        samples = []
        for item, state in stream.samples(self.slot_states[w]):
            try:
                image, params = self.dataset.prepare(item["image"], item["epoch"], item["index"])
                samples.append(stream_sample(item, image, params))
            except (DecodeError, OSError) as e:
                stream.damage.samples += 1
                log.warning("skipping sample %d of epoch %d: %s", item["index"], item["epoch"], e)
            if len(samples) < self.batch_size:
                continue
            batch = self.collate(samples)
            now = (stream.damage.shards, stream.damage.samples)
            batch["skipped"] = now[1] - reported[1]
            batch["skipped_shards"] = now[0] - reported[0]
            batch["stream"] = {"worker": w, "state": copy_state(state)}
            reported, samples = now, []
            yield batch


class StreamLoader:
    """Endless iterator of batch dicts over webdataset shards for one rank; resumable between steps, also on
    another data-parallel size or worker count."""

    def __init__(
        self, source, dataset, collate, batch_size, *, rank, world_size, seed, num_workers, options, pin_memory=None
    ):
        self.shards, self.dataset, self.collate, self.batch_size = source.shards, dataset, collate, batch_size
        self.num_workers = num_workers
        workers = max(1, num_workers)
        slots = world_size * workers
        if len(self.shards) < slots:
            raise ValueError(
                f"{source.spec}: {len(self.shards)} shard(s) cannot feed {world_size} rank(s) x {workers} loader "
                f"worker(s) = {slots} readers; use more shards or fewer data.num_workers"
            )
        self.layout = {
            "seed": seed,
            "num_shards": len(self.shards),
            "rank": rank,
            "world_size": world_size,
            "workers": workers,
            "interleave": options.shard_interleave,
            "buffer": options.shuffle_buffer,
            "max_sample_bytes": options.max_sample_bytes,
        }
        self.offset = (0, 0)
        self.slots = [fresh_slot() for _ in range(workers)]
        self.next_worker = 0
        self.skipped_total = self.skipped_shards = 0
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory

    def __iter__(self):
        data = StreamBatches(self, self.next_worker)
        dl = torch.utils.data.DataLoader(
            data,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            prefetch_factor=2 if self.num_workers else None,
            multiprocessing_context="forkserver" if self.num_workers else None,
            generator=torch.Generator(),
            worker_init_fn=functools.partial(exit_with_process, os.getpid()) if self.num_workers else None,
        )
        for batch in dl:
            info = batch.pop("stream")
            self.slots[info["worker"]] = info["state"]
            self.next_worker = (info["worker"] + 1) % self.layout["workers"]
            self.skipped_total += batch["skipped"]
            self.skipped_shards += batch["skipped_shards"]
            yield batch

    def state_dict(self) -> dict:
        return {
            "kind": "shards",
            "layout": dict(self.layout),
            "offset": list(self.offset),
            "slots": [copy_state(s) for s in self.slots],
            "next_worker": self.next_worker,
            "skipped_total": self.skipped_total,
            "skipped_shards": self.skipped_shards,
        }

    def load_state_dict(self, state: dict, all_ranks=None) -> None:
        """Restores `state` (this rank's); when it was written on another layout, `all_ranks()` gives every
        written rank's state and the stream continues from their global shard position."""
        if state.get("kind") != "shards":
            raise ValueError("the checkpoint's data position is not a shard stream's; resume with its data.source")
        old = state["layout"]
        for k in ("seed", "num_shards"):
            if old[k] != self.layout[k]:
                raise ValueError(
                    f"the checkpoint's data stream has {k}={old[k]} but this run has {k}={self.layout[k]}; resume "
                    "with the same data.source and train.seed"
                )
        self.skipped_total, self.skipped_shards = int(state["skipped_total"]), int(state["skipped_shards"])
        same = all(old[k] == self.layout[k] for k in ("rank", "world_size", "workers", "interleave"))
        if same:
            self.offset, self.slots = tuple(state["offset"]), [copy_state(s) for s in state["slots"]]
            self.next_worker = int(state["next_worker"])
            return
        if all_ranks is None:
            raise ValueError("the data position was written on another layout; every rank's state is needed")
        self._rebase(old, state["offset"], [s for r in all_ranks() for s in r["slots"]])

    def _rebase(self, old: dict, offset, old_slots: list[dict]) -> None:
        slots, interleave = old["world_size"] * old["workers"], old["interleave"]
        if len(old_slots) != slots:
            raise ValueError(f"the checkpoint holds {len(old_slots)} of the {slots} data positions it was written with")
        position = global_position(old_slots, slots, interleave, offset)
        repeat = repeat_bound(old_slots, (old["num_shards"], slots, interleave), offset, position)
        self.offset, self.next_worker = position, 0
        self.slots = [fresh_slot(position[0]) for _ in range(self.layout["workers"])]
        if self.layout["rank"] == 0:
            L = self.layout
            print(
                f"data: resuming shards read by {old['world_size']} rank(s) x {old['workers']} worker(s) on "
                f"{L['world_size']} x {L['workers']}: epoch {position[0]} continues at shard {position[1]} of "
                f"{L['num_shards']} in its order; at most {repeat} sample(s) already seen can repeat",
                flush=True,
            )
