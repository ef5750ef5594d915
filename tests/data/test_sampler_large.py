"""Image folders at scale: no N-sized permutation per rank beyond FULL_PERMUTATION_MAX, compact labels."""

import numpy as np

from fastvit.data import sampler as S
from fastvit.data.sources import ImageFolderSource


def test_block_shuffle_is_a_permutation_split_over_ranks_without_an_n_sized_array(monkeypatch):
    monkeypatch.setattr(S, "FULL_PERMUTATION_MAX", 16)
    monkeypatch.setattr(S, "BLOCK", 8)
    n, world = 53, 3
    ranks = [S.ResumableSampler(n, rank=r, world_size=world, seed=4) for r in range(world)]
    for epoch in (0, 1):
        got = np.concatenate([r.epoch_indices(epoch) for r in ranks])
        assert len(got) == 51 and len(set(got.tolist())) == 51 and got.max() < n
        assert all(r._perm.size <= 8 and r._blocks.size == n // 8 for r in ranks)
    assert not np.array_equal(ranks[0].epoch_indices(0), ranks[0].epoch_indices(1))
    resumed = S.ResumableSampler(n, rank=1, world_size=world, seed=4)
    resumed.load_state_dict({**ranks[1].state_dict(), "pos": 5})
    it = iter(resumed)
    assert [next(it)[1] for _ in range(16)] == ranks[1].epoch_indices(0)[5:].tolist() + ranks[1].epoch_indices(1)[
        :4
    ].tolist()


def test_image_folder_labels_are_one_int32_array(jpeg_folder):
    src = ImageFolderSource(str(jpeg_folder))
    assert src.labels.dtype == np.int32 and src.labels.tolist() == [k // 6 for k in range(18)]
