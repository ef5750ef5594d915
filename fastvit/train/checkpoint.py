"""Checkpoints with torch.distributed.checkpoint (DCP): crash-safe, verified, resharded on load.

Layout of a run folder:
    checkpoints/step_<n>/         DCP files of model, teacher, optimizer (+ extra_rank<r>.pt, manifest.json)
    checkpoints/latest            text file naming the newest complete step folder

A checkpoint is written into step_<n>.tmp/ and renamed when every rank has finished, and
`latest` is replaced last (atomically), so a crash at any point leaves the previous one usable.
State that must not be merged (RNG states, data sampler position) goes into extra_rank<r>.pt
beside the DCP files, one per data-parallel rank r (tensor-parallel ranks share their group's).

manifest.json records the size and SHA-256 of every file, the run the checkpoint belongs to and its
place in the write order: loading verifies the files, a damaged `latest` falls back to the newest
intact checkpoint of the same run, and pruning keeps the newest by write order (never by step number,
which a restarted run reuses). Nothing is unpickled unrestricted: extra_rank<r>.pt is read with
torch.load(weights_only=True) and DCP's .metadata with an allow-list of the classes DCP writes there
(fastvit/train/safe_load.py).
"""

import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import uuid
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from fastvit.errors import UserError, os_error_message, user_os_error
from fastvit.fileio import write_atomic
from fastvit.train.dcp_sharded import FILE_BYTES, BoundedFileWriter, FusedRowsLoadPlanner, FusedRowsSavePlanner
from fastvit.train.safe_load import SafeFileSystemReader, encode_extra, load_extra, read_dcp_metadata

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"step_(\d+)")


def _rank():
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier(group=None):
    if dist.is_initialized():
        dist.barrier(group=group)


def checkpoint_dir(run_dir):
    return Path(run_dir) / "checkpoints"


# ---- manifest: checksums, run and write order ------------------------------------------------------------


def _sha256(file):
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _file_entry(file):
    return {"size": file.stat().st_size, "sha256": _sha256(file)}


def _manifest_problem(manifest):
    """None when `manifest` has the form _write_manifest gives it, else what is wrong: its entries must be plain
    file names of the checkpoint folder (never a path out of it), its order and step integers."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "it is not an object with a files map"
    for key in ("order", "step"):
        if key in manifest and (isinstance(manifest[key], bool) or not isinstance(manifest[key], int)):
            return f"its {key} is {manifest[key]!r}, not an integer"
    for name, entry in manifest["files"].items():
        if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
            return f"entry {name[:60]!r} is not a plain file name"
        size = entry.get("size") if isinstance(entry, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or not isinstance(entry.get("sha256"), str):
            return f"entry {name!r} has no size and sha256"
    return None


def _read_manifest(path):
    """(manifest or None, what is wrong with it or None) of a checkpoint folder."""
    file = Path(path) / MANIFEST
    if file.is_symlink():
        return None, f"{MANIFEST} is a symbolic link"
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"{MANIFEST} is unreadable ({type(e).__name__})"
    problem = _manifest_problem(manifest)
    return (None, f"{MANIFEST} is malformed: {problem}") if problem else (manifest, None)


def read_manifest(path):
    """The manifest of a checkpoint folder, or None (written before manifests, unreadable or malformed)."""
    return _read_manifest(path)[0]


def verify_checkpoint(path, share=(0, 1)):
    """None when the files of checkpoint `path` match its manifest, else what is wrong (one phrase).

    share=(i, n): check only every n-th file from the i-th (ranks split the reading). A checkpoint
    without a manifest (written before they existed) is checked for its .metadata only."""
    path = Path(path)
    if path.is_symlink():
        return "the folder is a symbolic link"
    if not path.is_dir():
        return "the folder does not exist"
    manifest, problem = _read_manifest(path)
    if manifest is None:
        if problem:
            return problem
        return None if (path / ".metadata").is_file() else ".metadata is missing"
    i, n = share
    for name, entry in sorted(manifest["files"].items())[i::n]:
        file = path / name
        if file.is_symlink():
            return f"{name} is a symbolic link"
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != entry["size"]:
            return f"{name} has {file.stat().st_size} bytes, not {entry['size']}"
        if _sha256(file) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _collective_device():
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _verify_all_ranks(path):
    """verify_checkpoint with the files split over the ranks; every rank gets the same answer."""
    if not dist.is_initialized():
        return verify_checkpoint(path)
    problem = verify_checkpoint(path, (dist.get_rank(), dist.get_world_size()))
    bad = torch.tensor([0.0 if problem is None else 1.0], device=_collective_device())
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item() == 0:
        return None
    return problem or verify_checkpoint(path)  # this rank's share was fine: find what is wrong


def _checkpoints(root):
    """[(write order, step, path, manifest)] of the complete checkpoints under `root`; no manifest: order -1."""
    out = []
    for p in root.glob("step_*"):
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir() and not p.is_symlink():
            manifest = read_manifest(p)
            order = manifest.get("order", -1) if manifest else -1
            out.append((order, int(m.group(1)), p, manifest))
    return sorted(out, key=lambda c: (c[0], c[1]))


def _pointer_target(root):
    """The folder `latest` names (which may not exist), or None without a pointer; UserError when it is garbage."""
    pointer = root / "latest"
    for p in (root, pointer):
        if p.is_symlink():
            raise UserError(f"{p} is a symbolic link; a run folder's files are its own: delete it to start afresh")
    if not pointer.exists():
        return None
    if not pointer.is_file():
        raise UserError(f"{pointer} is not a file; delete it to start afresh")
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{pointer} cannot be read ({e}); delete it to start afresh") from None
    if not _STEP_DIR.fullmatch(name):
        what = "is empty" if not name else f"names {name[:40]!r}, not a step_<n> folder"
        raise UserError(
            f"{pointer} {what}; write the newest checkpoint's folder name into it (e.g. step_500) "
            "or delete it to start afresh"
        )
    return root / name


def latest_checkpoint(run_dir, verify=True):
    """Path of the newest intact checkpoint of a run folder, or None (no `latest` pointer).

    With verify, a `latest` checkpoint whose files are damaged or gone falls back to the newest intact
    checkpoint of the same run, with a one-line warning naming both (every rank of a distributed run
    must call this together). UserError when no intact one is left."""
    root = checkpoint_dir(run_dir)
    path = _pointer_target(root)
    if path is None or not verify:
        if path is not None and not path.is_dir():
            raise UserError(f"{root / 'latest'} names {path.name}, which does not exist; delete it to start afresh")
        if path is not None and path.is_symlink():
            raise UserError(f"{path} is a symbolic link; a run folder's checkpoints are its own: delete it")
        return path
    problem = _verify_all_ranks(path)
    if problem is None:
        return path
    own = read_manifest(path)
    for order, _, candidate, manifest in reversed(_checkpoints(root)):
        if candidate == path or manifest is None:
            continue
        if own is not None and (manifest.get("run") != own.get("run") or order >= own.get("order", -1)):
            continue
        if _verify_all_ranks(candidate) is None:
            if _rank() == 0:
                print(
                    f"fastvit: warning: checkpoint {path} is damaged ({problem}); using {candidate} instead",
                    file=sys.stderr,
                    flush=True,
                )
            return candidate
    raise UserError(
        f"checkpoint {path} is damaged ({problem}) and no intact earlier checkpoint of this run is left; "
        f"delete {root / 'latest'} to start afresh"
    )


def _run_and_order(root):
    """(run id, write order) for the next checkpoint: the run of the checkpoint `latest` names (a new id when
    there is none), and one past the largest write order in the folder."""
    orders = [c[0] for c in _checkpoints(root)]
    try:
        target = _pointer_target(root)
    except UserError:
        target = None
    manifest = read_manifest(target) if target is not None else None
    run = manifest.get("run") if manifest else None
    return run or uuid.uuid4().hex, max(orders, default=-1) + 1


# ---- save --------------------------------------------------------------------------------------------------


def _digest_own_files(tmp, extra_file):
    """Writes digest_rank<r>.json: size and SHA-256 of the DCP files this rank wrote (and its extra file)."""
    rank = _rank()
    names = [p.name for p in tmp.glob(f"__{rank}_*.distcp")]
    if extra_file is not None:
        names.append(extra_file.name)
    if rank == 0:
        names.append(".metadata")
    digests = {name: _file_entry(tmp / name) for name in names if (tmp / name).is_file()}
    (tmp / f"digest_rank{rank}.json").write_text(json.dumps(digests))


def _write_manifest(tmp, step, run, order):
    files = {}
    for part in sorted(tmp.glob("digest_rank*.json")):
        files.update(json.loads(part.read_text()))
        part.unlink()
    for file in sorted(tmp.iterdir()):  # anything a rank did not digest (another DCP file naming)
        if file.is_file() and file.name not in files and file.name != MANIFEST:
            files[file.name] = _file_entry(file)
    manifest = {"format": 1, "step": step, "run": run, "order": order, "files": files}
    write_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def save_checkpoint(run_dir, step, state, extra, keep=2, extra_rank=None, file_bytes=FILE_BYTES, group=None):
    """Writes `state` (a DCP state dict, same keys on every rank; each rank writes its own shards, in files of
    at most file_bytes) and, on ranks given an extra_rank (default: the global rank), `extra` as
    extra_rank<extra_rank>.pt; then keeps the `keep` newest checkpoints of this run (by write order, always the
    one just written). group: the process group of the collectives (fastvit.train.async_checkpoint's own)."""
    if keep < 1:
        raise UserError(f"train.keep_checkpoints={keep}: keep at least 1 checkpoint")
    root = checkpoint_dir(run_dir)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    try:
        if _rank() == 0:
            _remove(tmp)
            tmp.mkdir(parents=True)
        _barrier(group)
        with warnings.catch_warnings():  # DCP warns that a single process saves without a process group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            writer = BoundedFileWriter(str(tmp), file_bytes=file_bytes)
            dcp.save(state, storage_writer=writer, planner=FusedRowsSavePlanner(), process_group=group)
        extra_rank = _rank() if extra_rank is None else extra_rank
        extra_file = tmp / f"extra_rank{extra_rank}.pt" if extra_rank >= 0 else None
        if extra_file is not None:
            torch.save(encode_extra(extra), extra_file)
        _digest_own_files(tmp, extra_file)
        _barrier(group)
        if _rank() == 0:
            run, order = _run_and_order(root)
            _write_manifest(tmp, step, run, order)
            _remove(final)
            os.replace(tmp, final)
            write_atomic(root / "latest", final.name + "\n")
            _prune(root, keep, final, run)
    except BaseException as e:
        cause = user_os_error(e)
        if cause is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"cannot write checkpoint {final}: {os_error_message(cause)}; the previous checkpoint is intact"
        ) from None
    _barrier(group)
    return final


def _remove(path):
    """Deletes a step folder, or the link or file in its place (never what a link points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _prune(root, keep, just_written, run):
    """Deletes this run's checkpoints beyond the `keep` newest by write order; never `just_written`, never
    another run's (a restarted run's older step numbers may be higher) or one without a manifest."""
    own = [c for c in _checkpoints(root) if c[3] is not None and c[3].get("run") == run and c[2] != just_written]
    for _, _, path, _ in own[: max(len(own) - (keep - 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)


# Optimizer state and param-group settings keyed by parameter name, not by group index: the groups a rank
# holds (and their order) depend on which blocks it holds, so index keys would collide across layouts.
OPTIM_BY_NAME = StateDictOptions(flatten_optimizer_state_dict=True)


def trainable_state(model, optimizer, *, with_optim=None):
    """{"student": model state, "optim": optimizer state} as DCP state dicts (DDP unwrapped, FSDP2 shards kept).

    The optimizer is left out while it has no state (before its first step) unless with_optim=True:
    torch fills an empty optimizer's state by running a dummy step, which would advance Adam's step count
    and make a run's trajectory depend on whether it wrote a step-0 checkpoint.
    """
    if with_optim or (with_optim is None and optimizer.state):
        model_sd, optim_sd = get_state_dict(model, optimizer, options=OPTIM_BY_NAME)
        return {"student": model_sd, "optim": optim_sd}
    return {"student": get_model_state_dict(model)}


def load_trainable_state(model, optimizer, state):
    """Applies what trainable_state(..., with_optim=True) held after load_checkpoint filled it."""
    if "optim" in state:
        set_state_dict(
            model, optimizer, model_state_dict=state["student"], optim_state_dict=state["optim"], options=OPTIM_BY_NAME
        )
    else:
        set_model_state_dict(model, state["student"])


def _dcp_load(state, path, **kw):
    """dcp.load through the restricted reader and planner; a damaged file is a UserError naming it."""
    read_dcp_metadata(path)  # its UserError first: DCP would wrap it in an AssertionError
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=SafeFileSystemReader(str(path)), planner=FusedRowsLoadPlanner(), **kw)
    except UserError:
        raise
    except BaseException as e:  # DCP wraps its readers' errors in CheckpointException (a BaseException)
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        failures = getattr(e, "failures", None)
        inner = next(iter(failures.values()))[0] if isinstance(failures, dict) and failures else e
        if isinstance(inner, UserError):
            raise inner from None
        message = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
        if isinstance(inner, OSError | EOFError | pickle.UnpicklingError) or "corrupt" in message.lower():
            raise UserError(
                f"checkpoint {path} cannot be read ({type(inner).__name__}: {message[:200]}); "
                "delete this checkpoint folder, or point `latest` at an earlier one"
            ) from None
        raise


def load_checkpoint(path, state, extra_rank=None):
    """Loads a DCP checkpoint into `state` in place (resharding as needed). Top-level entries the
    checkpoint does not hold (the optimizer of a step-0 checkpoint) are dropped from `state`.
    Returns this rank's extra state, or None when the checkpoint was written by fewer ranks."""
    saved = {key.split(".", 1)[0] for key in read_dcp_metadata(path).state_dict_metadata}
    for key in [k for k in state if k not in saved]:
        del state[key]
    _dcp_load(state, path)
    extra = Path(path) / f"extra_rank{_rank() if extra_rank is None else extra_rank}.pt"
    return load_extra(extra) if extra.is_file() else None


def load_all_extras(path):
    """The extra states of every data-parallel rank that wrote checkpoint `path`, by rank (a resume on another
    data-parallel size re-lays the data position over the new ranks)."""
    files = sorted(Path(path).glob("extra_rank*.pt"), key=lambda f: int(f.stem.removeprefix("extra_rank")))
    if not files:
        raise UserError(f"{path} holds no data / RNG state (extra_rank*.pt); resume from an earlier checkpoint")
    return [load_extra(f) for f in files]


def load_module(path, module, key, prefix="", *, sharded=False):
    """Loads the entries `key`.`prefix`<name> of a checkpoint into `module` in place, e.g. load_module(path,
    backbone, "teacher", "backbone.") for the EMA teacher's ViT. Plain tensors, this process alone (even inside a
    distributed run); sharded=True: a module sharded over the default process group (FSDP2 DTensors), every rank
    reading its shards only. The checkpoint's files are verified against its manifest first (split over the
    ranks when sharded)."""
    problem = _verify_all_ranks(path) if sharded else verify_checkpoint(path)
    if problem is not None:
        raise UserError(f"checkpoint {path} is damaged ({problem}); evaluate an earlier checkpoint")
    state = {key: {prefix + name: t for name, t in module.state_dict().items()}}  # tensors share the storage
    _dcp_load(state, path, **({} if sharded else {"no_dist": True}))
    return module


def step_of(path):
    return int(Path(path).name.split("_")[1])


# ---- resuming with another config -----------------------------------------------------------------------------

# Keys whose change makes the saved weights not fit the model (or the objective's state not fit the task).
_RESUMABLE_MODEL_KEYS = {"model.attn_backend", "model.drop_path", "model.init"}  # a resume reads its own weights


def resume_conflicts(saved, requested):
    """Dotted keys whose values differ between two configs in a way a checkpoint cannot resume across: the model's
    shape, objective.name and the keys of the objective's section that its spec declares (resume_fixed_keys)."""
    from fastvit.config import get_key, to_dict
    from fastvit.tasks import spec_of

    keys = [f"model.{k}" for k in to_dict(requested)["model"] if f"model.{k}" not in _RESUMABLE_MODEL_KEYS]
    keys.append("objective.name")
    if saved.objective.name == requested.objective.name:
        spec = spec_of(requested.objective.name)
        keys += [f"objective.{spec.name}.{k}" for k in spec.resume_fixed_keys]
    out = []
    for key in keys:
        old, new = get_key(saved, key), get_key(requested, key)
        if old != new:
            out.append(f"{key}={new!r} (saved: {old!r})")
    return out


def check_resume(cfg, run_dir):
    """Before anything is built or written: UserError when run_dir has checkpoints and `cfg` changes a key they
    cannot resume across (model shape, objective), so a refused resume leaves the folder as it was."""
    from fastvit.config import read_config

    run_dir = Path(run_dir)
    saved_path = run_dir / "config.yaml"
    if _pointer_target(checkpoint_dir(run_dir)) is None or not saved_path.is_file():
        return
    try:
        saved = read_config(saved_path)
    except ValueError:  # written by another version (keys since renamed): the checkpoint's shapes decide
        return
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        raise UserError(
            f"{run_dir} holds checkpoints of another model: {', '.join(conflicts)}; restore the saved values to "
            "resume, or set train.out to a new folder"
        )
