"""Map-style sources: no N-sized permutation per rank beyond FULL_PERMUTATION_MAX, compact labels, a resume on
the data-parallel size the position was written with."""

import numpy as np
import pytest

from fastvit.data import MultiCropConfig, build_loader
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


def test_a_map_style_position_resumes_only_on_its_data_parallel_size():
    crops = MultiCropConfig(global_size=16, local_size=8, n_local=0)
    two = build_loader("builtin", batch_size=2, crops=crops, rank=0, world_size=2, num_workers=0)
    one = build_loader("builtin", batch_size=2, crops=crops, num_workers=0)
    with pytest.raises(ValueError, match="written by 2 data-parallel rank.*resumes on that many"):
        one.load_state_dict(two.state_dict(), all_ranks=lambda: [two.state_dict()] * 2)
    with pytest.raises(ValueError, match="shard stream's; resume with its data.source"):
        one.load_state_dict({"kind": "shards", "skipped_total": 0})
