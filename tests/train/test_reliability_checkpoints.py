"""Checkpoints that cannot be lost: pruning by write order, checksums, fallback, disk full, restricted unpickling."""

import errno
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from fastvit.errors import UserError
from fastvit.train import checkpoint as ckpt


def _model():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _extra(step):
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    return {"rng": rng, "loader": {"sampler": {"pos": step}}, "step": step}


def _save(run, step, keep=2):
    model, optimizer = _model()
    return ckpt.save_checkpoint(run, step, ckpt.trainable_state(model, optimizer), _extra(step), keep=keep)


def _steps(run):
    return sorted(ckpt.step_of(p) for p in (run / "checkpoints").glob("step_*") if not p.name.endswith(".tmp"))


def test_pruning_keeps_the_new_checkpoints_when_older_higher_numbered_folders_remain(tmp_path):
    for step in (10, 20):
        _save(tmp_path, step)
    (tmp_path / "checkpoints" / "latest").unlink()  # "delete the pointer to start afresh"
    for step in (1, 2, 3):
        path = _save(tmp_path, step)
        assert path.is_dir(), f"step_{step} was deleted right after it was written"
        assert ckpt.latest_checkpoint(tmp_path) == path
    assert _steps(tmp_path) == [2, 3, 10, 20]  # the old run's folders are left alone


def test_keep_must_be_at_least_one(tmp_path):
    with pytest.raises(UserError, match="keep_checkpoints=0"):
        _save(tmp_path, 1, keep=0)
    path = _save(tmp_path, 1, keep=1)
    _save(tmp_path, 2, keep=1)
    assert not path.exists() and _steps(tmp_path) == [2]


def test_extra_state_round_trips_through_weights_only(tmp_path):
    model, optimizer = _model()
    extra = _extra(7)
    path = ckpt.save_checkpoint(tmp_path, 7, ckpt.trainable_state(model, optimizer), extra)
    back = ckpt.load_checkpoint(path, ckpt.trainable_state(model, optimizer, with_optim=True))
    assert back["step"] == 7 and back["loader"] == extra["loader"]
    assert back["rng"]["python"] == extra["rng"]["python"]
    np_state, saved = back["rng"]["numpy"], extra["rng"]["numpy"]
    assert np_state[0] == saved[0] and np_state[1].dtype == saved[1].dtype and (np_state[1] == saved[1]).all()
    assert torch.equal(back["rng"]["torch"], extra["rng"]["torch"])


def _garble(path):
    shard = next(path.glob("*.distcp"))
    size = shard.stat().st_size
    shard.write_bytes(os.urandom(size))  # same size: only a checksum sees it
    return shard


def test_a_damaged_latest_falls_back_to_the_previous_intact_one(tmp_path, capfd):
    previous = _save(tmp_path, 1)
    latest = _save(tmp_path, 2)
    _garble(latest)
    assert ckpt.latest_checkpoint(tmp_path) == previous
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(latest) in err[0] and str(previous) in err[0] and "checksum" in err[0]


def test_no_intact_checkpoint_left_is_one_user_error(tmp_path):
    _garble(_save(tmp_path, 1))
    with pytest.raises(UserError, match="step_1 is damaged"):
        ckpt.latest_checkpoint(tmp_path)


def test_a_truncated_shard_names_the_file(tmp_path):
    path = _save(tmp_path, 1)
    shard = next(path.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match=f"{shard.name} has 100 bytes"):
        ckpt.latest_checkpoint(tmp_path)
    (path / ckpt.MANIFEST).unlink()  # a checkpoint written before manifests: DCP's error, named
    model, optimizer = _model()
    with pytest.raises(UserError, match=f"checkpoint {path} cannot be read"):
        ckpt.load_checkpoint(path, ckpt.trainable_state(model, optimizer, with_optim=True))


@pytest.mark.parametrize("content", ["", "\n", "garbage"])
def test_an_empty_or_garbage_pointer_is_one_user_error(tmp_path, content):
    _save(tmp_path, 1)
    (tmp_path / "checkpoints" / "latest").write_text(content)
    with pytest.raises(UserError, match="latest (is empty|names 'garbage')"):
        ckpt.latest_checkpoint(tmp_path)


def test_disk_full_leaves_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    previous = _save(tmp_path, 1)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "extra_rank0.pt")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(UserError, match="No space left on device.*free space"):
        _save(tmp_path, 2)
    assert ckpt.latest_checkpoint(tmp_path) == previous
    assert not (tmp_path / "checkpoints" / "step_2.tmp").exists() and not (tmp_path / "checkpoints" / "step_2").exists()


class _Payload:
    """Unpickling it runs `touch MARKER`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rehash(path, name):
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    manifest["files"][name] = ckpt._file_entry(path / name)  # the attacker fixes the checksum too
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))


def test_crafted_metadata_is_refused_and_runs_nothing(tmp_path):
    path = _save(tmp_path, 1)
    marker = tmp_path / "pwned"
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    _rehash(path, ".metadata")
    model, optimizer = _model()
    with pytest.raises(UserError, match=r"\.metadata was refused.*system"):
        ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), ckpt.trainable_state(model, optimizer, with_optim=True))
    with pytest.raises(UserError, match=r"\.metadata was refused"):
        ckpt.load_module(path, model, "student")
    assert not marker.exists()


def test_crafted_extra_file_is_refused_and_runs_nothing(tmp_path):
    path = _save(tmp_path, 1)
    marker = tmp_path / "pwned"
    torch.save({"rng": _Payload(marker)}, path / "extra_rank0.pt")
    _rehash(path, "extra_rank0.pt")
    model, optimizer = _model()
    with pytest.raises(UserError, match=r"extra_rank0\.pt refers to posix\.system"):
        ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), ckpt.trainable_state(model, optimizer, with_optim=True))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_crafted_non_tensor_entry_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    dcp.save({"student": {"w": torch.zeros(2), "note": _Payload(marker)}}, checkpoint_id=str(tmp_path), no_dist=True)
    with pytest.raises(UserError, match="refused"):
        ckpt._dcp_load({"student": {"w": torch.zeros(2), "note": None}}, tmp_path, no_dist=True)
    assert not marker.exists()
