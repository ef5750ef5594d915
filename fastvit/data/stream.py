"""The shard stream: which shards a loader worker reads, in which order, and where it stands.

Layout (after open_clip's and webdataset's shard-level shuffling, split by node and worker): every epoch e is a
permutation of the shards seeded by (seed, e). The data-parallel ranks and their loader workers are `slots`
(slot = rank * workers + worker, S of them); slot s reads every S-th shard of the permutation from s on. A slot
reads its shards in groups of `interleave`, mixing the samples of a group round-robin into a shuffle buffer of
`buffer` samples seeded by the group (seed, e, first shard): when full, a random sample leaves it; at the end of
the group it drains.

Position: a slot's state is (epoch, group, samples emitted in the group) and the sample counts of the last
HISTORY groups it finished this epoch and last epoch (older ones summed): under 1 KB, whatever the data size.
Resuming replays the one group in flight and drops the samples already emitted (read, never decoded), so the
stream continues bit for bit. Because the buffer is seeded per group, its RNG never needs to be saved. An
`offset` (epoch, K) starts one epoch at position K of its permutation: a resume on another layout (dp size,
workers, interleave) continues from the first shard some slot had not finished (StreamLoader's rebase).
"""

import numpy as np

from fastvit.data.shardio import (
    DEFAULT_MAX_SAMPLE_BYTES,
    IMAGE_EXTS,
    Damage,
    parse_caption,
    parse_label,
    tar_samples,
)
from fastvit.errors import UserError

INDEX_BITS = 20  # a sample's index: shard id << INDEX_BITS | ordinal in the shard (per-sample seeds, logs)


def shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_shards)


HISTORY = 64  # sample counts kept of a slot's last finished groups (older ones summed): the repeat bound


def fresh_slot(epoch: int = 0) -> dict:
    return {"epoch": epoch, "group": 0, "emitted": 0, "done": [], "older": 0, "prev_done": [], "prev_older": 0}


def _finish_group(state: dict, n: int) -> None:
    state["done"].append(n)
    if len(state["done"]) > HISTORY:
        state["older"] += state["done"].pop(0)
    state.update(group=state["group"] + 1, emitted=0)


def copy_state(state: dict) -> dict:
    return {**state, "done": list(state["done"]), "prev_done": list(state["prev_done"])}


class ShardStream:
    """The endless sample stream of one slot: yields (sample dict, slot state after it)."""

    def __init__(self, shards, *, seed, slot, slots, interleave=4, buffer=1000, offset=(0, 0), max_sample_bytes=None):
        self.shards, self.seed, self.slot, self.slots = shards, seed, slot, slots
        self.interleave, self.buffer, self.offset = max(1, interleave), max(1, buffer), tuple(offset)
        self.max_sample_bytes = max_sample_bytes or DEFAULT_MAX_SAMPLE_BYTES
        self.damage = Damage()
        self.replaying = False  # while re-reading the samples a resume drops, damage is not counted again

    def slot_shards(self, epoch: int) -> np.ndarray:
        start = self.offset[1] if epoch == self.offset[0] else 0
        return shard_order(len(self.shards), self.seed, epoch)[start:][self.slot :: self.slots]

    def samples(self, state: dict):
        """From `state` on, forever. A slot that finds no sample in two epochs in a row stops (all damaged)."""
        state = copy_state(state)
        empty_epochs = 0
        while empty_epochs < 2:
            mine = self.slot_shards(state["epoch"])
            groups = [mine[i : i + self.interleave] for i in range(0, len(mine), self.interleave)]
            got = False
            for g in range(state["group"], len(groups)):
                n, state["group"] = state["emitted"], g
                it = self._group(groups[g], state["epoch"], n)
                sample = next(it, None)
                if sample is None:  # nothing (left) in this group
                    _finish_group(state, n)
                while sample is not None:  # one ahead: the group's last sample moves the state to the next group
                    after, n, got = next(it, None), n + 1, True
                    if after is None:
                        _finish_group(state, n)
                    else:
                        state["emitted"] = n
                    yield sample, state
                    sample = after
            empty_epochs = 0 if got or not groups else empty_epochs + 1
            state.update(epoch=state["epoch"] + 1, group=0, emitted=0, prev_done=state["done"], done=[])
            state.update(prev_older=state["older"], older=0)
        raise UserError(
            f"loader slot {self.slot} of {self.slots} found no readable sample in its shards for two epochs (all "
            "missing or damaged, see the warnings); check the files of data.source"
        )

    def _group(self, shard_ids, epoch: int, skip: int):
        """The samples of one group through the shuffle buffer, without the first `skip`."""
        rng = np.random.default_rng([self.seed, epoch, int(shard_ids[0]), 0xB0F])
        live = [(int(s), self._shard(int(s), epoch)) for s in shard_ids]
        buf, emitted = [], 0
        self.replaying = skip > 0
        while live or buf:
            while live and len(buf) < self.buffer:
                for item in list(live):
                    sample = next(item[1], None)
                    if sample is None:
                        live.remove(item)
                    else:
                        buf.append(sample)
            if not buf:
                break
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            sample = buf.pop()
            emitted += 1
            if emitted > skip:
                self.replaying = False
                yield sample

    def _shard(self, shard_id: int, epoch: int):
        damage = Damage()
        for ordinal, members in tar_samples(self.shards[shard_id], damage, self.max_sample_bytes):
            self._count(damage)
            image = next(members[e] for e in IMAGE_EXTS if e in members)
            yield {
                "image": image,
                "label": parse_label(members),
                "caption": parse_caption(members),
                "epoch": epoch,
                "index": (shard_id << INDEX_BITS) | ordinal,
            }
        self._count(damage)

    def _count(self, damage: Damage):
        if not self.replaying:
            self.damage.shards += damage.shards
            self.damage.samples += damage.samples
        damage.shards = damage.samples = 0


def global_position(states: list[dict], slots: int, interleave: int, offset) -> tuple[int, int]:
    """(epoch, K): every shard before position K of the epoch's permutation was finished by its slot; the
    slowest slot's epoch. Slots in a later epoch count as having finished this one."""
    epoch = min(s["epoch"] for s in states)
    start = offset[1] if epoch == offset[0] else 0
    firsts = [s["group"] * interleave * slots + k for k, s in enumerate(states) if s["epoch"] == epoch]
    return epoch, start + min(firsts)


def repeat_bound(states: list[dict], layout: tuple[int, int, int], offset, position: tuple[int, int]) -> int:
    """At most how many samples already consumed are read again when every slot restarts at `position`: those
    of the groups whose last shard is at or after position K (and all consumed in the next epoch). layout:
    (num_shards, slots, interleave) of the states; groups older than the kept HISTORY count whole."""
    num_shards, slots, interleave = layout
    epoch, K = position
    start = offset[1] if epoch == offset[0] else 0
    total = 0
    for k, s in enumerate(states):
        if s["epoch"] == epoch:
            done, older, finished, total = s["done"], s["older"], s["group"], total + s["emitted"]
        else:  # a slot already in the next epoch finished all its groups of this one
            done, older, total = s["prev_done"], s["prev_older"], total + sum(s["done"]) + s["older"] + s["emitted"]
            finished = -(-len(range(k, num_shards - start, slots)) // interleave)
        first = finished - len(done)  # the group of done[0]
        ends = [start + ((g + 1) * interleave - 1) * slots + k for g in range(first - 1, finished)]
        total += sum(c for c, end in zip(done, ends[1:]) if end >= K)  # ends[0]: the last of the older groups
        total += older if first > 0 and ends[0] >= K else 0
    return total
