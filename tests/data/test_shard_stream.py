"""The shard stream: layout over ranks and workers, exact resume, elastic resume, damage counted, remote shards,
bounded reads (regular files only, max_sample_bytes)."""

import functools
import http.server
import os
import tarfile
import threading

import pytest
from shardkit import add, png, write_shards

from fastvit.data import augment as A
from fastvit.data.build import DataOptions, build_loader
from fastvit.data.shardio import Damage, shard_list, tar_samples
from fastvit.data.shards import main as make_shards
from fastvit.data.sources import ImageFolderSource, ShardSource
from fastvit.data.stream import ShardStream, fresh_slot, global_position, repeat_bound, shard_order

CROPS = A.MultiCropConfig(global_size=16, local_size=8, n_local=1)


def ids(stream, n, state=None):
    out = []
    for sample, st in stream.samples(state or fresh_slot()):
        out.append(sample["index"])
        if len(out) == n:
            return out, dict(st)
    return out, None


def loader(pattern, *, batch=4, workers=0, rank=0, world=1, buffer=8, interleave=2, seed=0):
    opts = DataOptions(num_workers=workers, shuffle_buffer=buffer, shard_interleave=interleave)
    return build_loader(
        f"webdataset:{pattern}", batch_size=batch, crops=CROPS, seed=seed, rank=rank, world_size=world, data=opts
    )


def take(it, n):
    return [next(it) for _ in range(n)]


def test_pattern_expands_without_touching_the_file_system(tmp_path):
    shards = shard_list(f"{tmp_path}/none-{{000000..199999}}.tar")
    assert len(shards) == 200_000 and shards[-1].endswith("none-199999.tar")
    assert shard_list("https://host/a-{0..2}.tar") == [f"https://host/a-{k}.tar" for k in range(3)]


def test_slots_split_every_epoch_into_disjoint_shards(tmp_path):
    pattern = write_shards(tmp_path, 6, 3)
    shards = shard_list(pattern)
    seen = []
    for slot in range(3):  # 3 readers (e.g. 3 ranks x 1 worker): one epoch is 2 shards x 3 samples each
        got, state = ids(ShardStream(shards, seed=1, slot=slot, slots=3, buffer=4, interleave=2), 6)
        assert state["epoch"] == 0 and sum(state["done"]) == 6 - state["emitted"]
        seen += got
    assert sorted(seen) == sorted((s << 20) | k for s in range(6) for k in range(3))
    one, _ = ids(ShardStream(shards, seed=1, slot=0, slots=1, buffer=4), 36)
    assert sorted(one[:18]) == sorted(one[18:]) and one[:18] != one[18:]  # epoch 1: same samples, new order


def test_stream_resumes_bit_exactly_from_its_state(tmp_path):
    shards = shard_list(write_shards(tmp_path, 5, 7))
    stream = functools.partial(ShardStream, shards, seed=3, slot=0, slots=1, buffer=5, interleave=2)
    whole, _ = ids(stream(), 60)
    for cut in (1, 9, 14, 35, 41):
        head, state = ids(stream(), cut)
        tail, _ = ids(stream(), 60 - cut, state)
        assert head + tail == whole


def test_the_state_stays_small_whatever_the_number_of_shards(tmp_path):
    shards = shard_list(write_shards(tmp_path, 80, 1))
    stream = functools.partial(ShardStream, shards, seed=0, slot=0, slots=1, buffer=2, interleave=1)
    head, state = ids(stream(), 75)
    assert len(state["done"]) == 64 and state["older"] == 75 - 64 and len(str(state)) < 400
    assert head + ids(stream(), 10, state)[0] == ids(stream(), 85)[0]


def test_loader_resume_gives_identical_batches_with_workers(tmp_path):
    pattern = write_shards(tmp_path, 6, 5)
    first = loader(pattern, workers=2)
    it = iter(first)
    ref = take(it, 3)  # consumed 3 batches (the DataLoader prefetched more)
    state = first.state_dict()
    ref += take(it, 4)
    assert len(str(state)) < 4000
    again = loader(pattern, workers=2)
    again.load_state_dict(state)
    rest = take(iter(again), 4)
    for a, b in zip(ref[3:], rest):
        assert a["indices"].tolist() == b["indices"].tolist()
        assert (a["global_crops"] == b["global_crops"]).all()


def test_resume_on_another_dp_size_continues_from_the_global_position(tmp_path, capsys):
    pattern = write_shards(tmp_path, 8, 4)
    ranks = [loader(pattern, rank=r, world=2, interleave=1, buffer=2) for r in range(2)]
    seen = set()
    for r in ranks:
        for b in take(iter(r), 3):  # 12 samples per rank: 3 shards of 4
            seen |= set(b["indices"].tolist())
    states = [r.state_dict() for r in ranks]
    one = loader(pattern, interleave=1, buffer=2)
    one.load_state_dict(states[0], all_ranks=lambda: states)
    line = capsys.readouterr().out
    assert "resuming shards read by 2 rank(s) x 1 worker(s) on 1 x 1" in line and "at most 0 sample" in line
    rest = set()
    for b in take(iter(one), 2):
        rest |= set(b["indices"].tolist())
    assert not rest & seen and len(rest) == 8  # the 2 shards nobody had read


def test_repeat_bound_counts_the_groups_at_or_after_the_global_position():
    # 8 shards, 2 slots, one shard per group: slot 0 finished groups 0-2 (shards 0, 2, 4 of the order; only the
    # last 2 counts kept, as with HISTORY = 2) and emitted 1 of group 3; slot 1 finished group 0, emitted 2 of 1
    slot0 = {**fresh_slot(), "group": 3, "emitted": 1, "done": [4, 4], "older": 4}
    slot1 = {**fresh_slot(), "group": 1, "emitted": 2, "done": [4]}
    position = global_position([slot0, slot1], 2, 1, (0, 0))
    assert position == (0, 3)  # order positions 0, 1, 2 are finished; 3 (slot 1's group 1) is in flight
    assert repeat_bound([slot0, slot1], (8, 2, 1), (0, 0), position) == 4 + 1 + 2  # shard at 4, and in flight
    ahead = {**fresh_slot(1), "emitted": 3, "prev_done": [4, 4, 4, 4]}  # slot 0 already in epoch 1
    assert global_position([ahead, slot1], 2, 1, (0, 0)) == (0, 3)
    assert repeat_bound([ahead, slot1], (8, 2, 1), (0, 0), (0, 3)) == 3 + (4 + 4) + 2  # epoch 1, shards 4 and 6


def _damaged_shards(tmp_path):
    pattern = write_shards(tmp_path, 5, 4)
    os.remove(tmp_path / "shard-000001.tar")  # missing
    raw = (tmp_path / "shard-000002.tar").read_bytes()
    cut = raw.index(png(2, 1)) + 100
    (tmp_path / "shard-000002.tar").write_bytes(raw[:cut])  # cut inside the 2nd sample's image
    with tarfile.open(tmp_path / "shard-000003.tar", "w") as tar:  # a sample without an image, one over the limit
        add(tar, "a.cls", b"1")
        add(tar, "b.png", png(0, 0))
        add(tar, "c.png", b"x" * 5000)
        add(tar, "d.png", png(0, 1))
    return pattern


def test_damage_is_counted_and_shifts_no_other_shard(tmp_path, caplog):
    pattern = _damaged_shards(tmp_path)
    damage = Damage()
    got = list(tar_samples(str(tmp_path / "shard-000003.tar"), damage, max_sample_bytes=4000))
    assert [o for o, _ in got] == [1, 3] and damage.samples == 2 and damage.shards == 0
    shards = shard_list(pattern)
    stream = ShardStream(shards, seed=0, slot=0, slots=1, buffer=1, interleave=5, max_sample_bytes=4000)
    got, _ = ids(stream, 11)  # one epoch, all shards in one group: 4 + 0 + 1 + 2 + 4
    assert stream.damage.shards == 2 and stream.damage.samples == 3  # missing, cut; cut sample, no image, over
    got, _ = ids(ShardStream(shards, seed=0, slot=0, slots=1, buffer=1, interleave=1, max_sample_bytes=4000), 11)
    assert sorted(i >> 20 for i in got) == [0] * 4 + [2] + [3] * 2 + [4] * 4
    assert any("shard-000001.tar" in r.message for r in caplog.records)
    whole = ids(ShardStream(shard_list(write_shards(tmp_path / "ok", 5, 4)), seed=0, slot=0, slots=1, buffer=1), 20)
    order = [i >> 20 for i in whole[0]]
    assert [s for s in order if s in (0, 4)] == [i >> 20 for i in got if i >> 20 in (0, 4)]


def test_loader_reports_skipped_shards_and_samples(tmp_path):
    pattern = _damaged_shards(tmp_path)
    it = iter(loader(pattern, batch=2, interleave=1, buffer=1))
    batches = take(it, 5)
    assert sum(b["skipped_shards"] for b in batches) == 2
    assert sum(b["skipped"] for b in batches) == 3  # the cut sample, the one without an image, the undecodable


def test_fifo_and_device_are_skipped_not_opened_blocking(tmp_path):
    os.mkfifo(tmp_path / "shard-000001.tar")
    write_shards(tmp_path, 1, 3)
    os.symlink("/dev/zero", tmp_path / "shard-000002.tar")
    damage = Damage()
    for name in ("shard-000001.tar", "shard-000002.tar"):
        assert list(tar_samples(str(tmp_path / name), damage)) == []
    assert damage.shards == 2
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(0, 0))
    os.mkfifo(folder / "b.png")
    os.symlink("/dev/zero", folder / "c.png")
    src = ImageFolderSource(str(folder), max_sample_bytes=10_000)
    assert src.read(0)[0] == png(0, 0)
    for i in (1, 2):
        with pytest.raises(OSError, match="not a regular file"):
            src.read(i)
    assert make_shards([str(folder), str(tmp_path / "out")]) == 0  # the FIFO and the device left out, counted
    assert [o for o, _ in tar_samples(str(tmp_path / "out" / "shard-000000.tar"), Damage())] == [0]
    assert os.listdir(tmp_path / "out") == ["shard-000000.tar"]


def test_a_shard_cut_at_a_header_boundary_or_with_a_broken_header_is_counted(tmp_path):
    write_shards(tmp_path, 1, 4)
    raw = (tmp_path / "shard-000000.tar").read_bytes()
    at = raw.index(b"0000_0002.png") - 0  # the header of the third sample's image starts with its name
    variants = {"cut": raw[:at], "broken": raw[:at] + b"garbage!" * 64 + raw[at + 512 :]}
    for name, data in variants.items():
        (tmp_path / f"{name}.tar").write_bytes(data)
        damage = Damage()
        assert [o for o, _ in tar_samples(str(tmp_path / f"{name}.tar"), damage)] == [0, 1], name
        assert damage.shards == 1 and damage.samples == 0, name  # the samples before it kept, the loss counted


def test_a_tar_member_declaring_100_gb_is_not_allocated(tmp_path):
    path = tmp_path / "bomb.tar"
    with tarfile.open(path, "w") as tar:
        add(tar, "a.png", png(0, 0))
    raw = bytearray(path.read_bytes())
    header = tarfile.TarInfo("z.png")
    header.size = 100 << 30
    end = 512 + -(-len(png(0, 0)) // 512) * 512  # after the first member's header and data blocks
    raw[end:end] = header.tobuf()  # a member whose header declares 100 GB, then the end
    path.write_bytes(bytes(raw))
    damage = Damage()
    assert [o for o, _ in tar_samples(str(path), damage)] == [0]
    assert damage.samples == 1 and damage.shards == 1  # over the limit; the tar ends before its data


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_shards_stream_from_a_loopback_http_server(tmp_path):
    write_shards(tmp_path, 3, 4)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/shard-{{000000..000002}}.tar"
        remote = [b["indices"].tolist() for b in take(iter(loader(url, batch=3, workers=1)), 4)]  # fsspec in a worker
        here = loader(f"{tmp_path}/shard-{{000000..000002}}.tar", batch=3)
        local = [b["indices"].tolist() for b in take(iter(here), 4)]
        assert remote == local
        mem = ShardSource(url).take(5)
        assert len(mem) == 5 and mem.read(0)[1] in range(7)
    finally:
        server.shutdown()
        server.server_close()


def test_eval_take_reads_only_the_shards_it_needs(tmp_path):
    write_shards(tmp_path, 4, 3)
    pattern = f"{tmp_path}/shard-{{000000..000004}}.tar"  # shard 4 does not exist
    seed = next(s for s in range(100) if shard_order(5, s, 0)[-1] == 4)  # the missing shard comes last
    src = ShardSource(pattern, seed=seed)
    mem = src.take(12)
    assert len(mem) == 12 and mem.index_skipped == 0  # 4 shards were enough: the missing one was never opened
    assert src.take(0).index_skipped == 1 and len(src.take(0)) == 12
