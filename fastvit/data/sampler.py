"""A resumable, rank-sharded, per-epoch-shuffled sampler that runs across epochs without end.

It yields (epoch, index) pairs so the dataset seeds each sample's augmentation by (seed, epoch,
index) whichever worker builds it. The position is advanced by what the training loop actually
consumed (`advance`), not by what the DataLoader prefetched, so `state_dict()` taken between
steps resumes at exactly the next sample.
"""

import numpy as np
import torch

FULL_PERMUTATION_MAX = 1 << 24  # up to this many samples an epoch is one permutation; beyond, a block shuffle
BLOCK = 1 << 16


class ResumableSampler(torch.utils.data.Sampler):
    """Each epoch: a permutation seeded by (seed, epoch), cut to a multiple of world_size, and
    every world_size-th index from `rank` on; ranks see disjoint samples of equal count."""

    def __init__(self, num_samples: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if num_samples < world_size:
            raise ValueError(f"{num_samples} samples cannot be shared by {world_size} ranks")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = num_samples // world_size
        self.epoch, self.pos = 0, 0

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices of one epoch, in order (small N: tests and the map-style loaders)."""
        return np.array([self.index_at(epoch, p) for p in range(self.per_rank)], dtype=np.int64)

    def index_at(self, epoch: int, p: int) -> int:
        """Sample at position p of this rank in `epoch`: global position p * world_size + rank of the epoch order."""
        g = p * self.world_size + self.rank
        if not self.shuffle:
            return g
        if self.num_samples <= FULL_PERMUTATION_MAX:
            return int(self._block(epoch, -1, self.num_samples)[g])
        return block_shuffle_index(self, epoch, g)

    def _block(self, epoch: int, block: int, size: int) -> np.ndarray:
        """A seeded permutation of `size` (one per (seed, epoch, block); block -1: the whole epoch), last one kept."""
        key = (self.seed, epoch, block, size)
        if getattr(self, "_key", None) != key:
            seeds = [self.seed, epoch] if block < 0 else [self.seed, epoch, block]
            self._key, self._perm = key, np.random.default_rng(seeds).permutation(size)
        return self._perm

    def __iter__(self):
        epoch, pos = self.epoch, self.pos
        while True:
            for p in range(pos, self.per_rank):
                yield epoch, self.index_at(epoch, p)
            epoch, pos = epoch + 1, 0

    def advance(self, n: int) -> None:
        """Record that the training loop consumed n more samples."""
        self.pos += n
        self.epoch += self.pos // self.per_rank
        self.pos %= self.per_rank

    def state_dict(self) -> dict:
        keys = ("epoch", "pos", "seed", "num_samples", "world_size", "rank", "shuffle")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "num_samples", "world_size", "shuffle"):
            if state[k] != getattr(self, k):
                raise ValueError(f"sampler state has {k}={state[k]!r} but this sampler has {k}={getattr(self, k)!r}")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def block_shuffle_index(sampler: ResumableSampler, epoch: int, g: int) -> int:
    """Large N: the epoch order is a seeded permutation of the full blocks of BLOCK samples (the partial last
    block stays last), each block shuffled inside; a rank holds one permutation of N / BLOCK blocks and one of a
    block, not one of all N samples (16 GB at N = 2B). A rank's consecutive positions stay in one block."""
    full = sampler.num_samples // BLOCK
    b, within = divmod(g, BLOCK)
    if b >= full:
        return full * BLOCK + int(sampler._block(epoch, full, sampler.num_samples - full * BLOCK)[within])
    if getattr(sampler, "_blocks_key", None) != (sampler.seed, epoch):
        order = np.random.default_rng([sampler.seed, epoch, 0xB10C]).permutation(full).astype(np.int32)
        sampler._blocks_key, sampler._blocks = (sampler.seed, epoch), order
    src = int(sampler._blocks[b])
    return src * BLOCK + int(sampler._block(epoch, src, BLOCK)[within])
