"""A resumable, rank-sharded, per-epoch-shuffled sampler that runs across epochs without end.

It yields (epoch, index) pairs so the dataset seeds each sample's augmentation by (seed, epoch,
index) whichever worker builds it. The position is advanced by what the training loop actually
consumed (`advance`), not by what the DataLoader prefetched, so `state_dict()` taken between
steps resumes at exactly the next sample.
"""

import numpy as np
import torch


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
        """This rank's sample indices of one epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        return order[: self.per_rank * self.world_size][self.rank :: self.world_size]

    def __iter__(self):
        epoch, pos = self.epoch, self.pos
        while True:
            indices = self.epoch_indices(epoch)
            for p in range(pos, self.per_rank):
                yield epoch, int(indices[p])
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
