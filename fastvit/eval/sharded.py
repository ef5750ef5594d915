"""kNN during training on every rank, from the live (sharded) module: train.eval_every.

The evaluated module is the objective's eval_module (Web-DINO's EMA teacher, MAE's and CLIP's student). Each
data-parallel rank extracts the features of its slice of the evaluation images (every dp-th image) with the
module as it is sharded for training (FSDP2 / TP: the roots' parameters are unsharded around the calls, the
blocks gather their own; under a pipeline each stage runs on its pp rank, fastvit.parallel.pp.StagedBackbone,
every pp rank of a chain reading the same images), the features and labels are all-gathered, and every rank
computes the same kNN top-1. No checkpoint is written or read for it, no rank waits behind a barrier while
another evaluates, and the ranks' forwards stay in step: a rank whose slice is shorter (or whose files were
unreadable) runs a forward on a repeated image and drops it, since FSDP's, TP's and the pipeline's collectives
need every rank in every forward.
"""

import math

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from fastvit.data import source_from_spec
from fastvit.eval.features import labelled_images
from fastvit.eval.knn import knn_accuracy
from fastvit.eval.subset import eval_indices


def _batches(source, size, indices, batch_size):
    xs, ys = [], []
    for x, y in labelled_images(source, size, indices):
        xs.append(x)
        ys.append(y)
        if len(xs) == batch_size:
            yield torch.stack(xs), torch.tensor(ys)
            xs, ys = [], []
    if xs:
        yield torch.stack(xs), torch.tensor(ys)


def _all_gather_rows(t, device, group):
    """The rows of every rank's (n_r, ...) tensor t, concatenated in rank order."""
    world = dist.get_world_size(group)
    n = torch.tensor([t.shape[0]], device=device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n, group=group)
    counts = [int(c) for c in counts]
    padded = t.new_zeros((max(counts), *t.shape[1:])).to(device)
    padded[: t.shape[0]] = t.to(device)
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    return torch.cat([o[:c] for o, c in zip(out, counts)]).cpu()


@torch.no_grad()
def sharded_features(roots, backbone, source, size, indices, *, mode, batch_size, device, dp_rank, dp, group):
    """(features (N, D), labels (N,)) of `indices` of a labelled source, each dp rank computing every dp-th
    image with `backbone` (inside the FSDP / TP-sharded modules `roots`, or DDP-wrapped ones; under a pipeline
    pp.StagedBackbone over the stages), gathered on every rank."""
    mine = indices[dp_rank::dp]
    steps = torch.tensor([math.ceil(len(mine) / batch_size)], device=device)
    if dist.is_initialized():
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)  # every rank runs as many forwards
    batches, feats, labels, last = _batches(source, size, mine, batch_size), [], [], None
    fsdp = [root for root in roots if isinstance(root, FSDPModule)]
    for root in fsdp:
        # FSDP2 makes the first module to run forward its root: at the step-0 kNN (before any step) that would be
        # the backbone's blocks, and the first training step through `root` then fails; declare it first.
        root._get_fsdp_state()._lazy_init()
        root.unshard()  # the embeddings and final norm; the blocks unshard themselves in their forward
    try:
        for _ in range(int(steps)):
            x, y = next(batches, (None, None))
            real = x is not None
            if real:
                last = x[:1]
            elif last is None:  # nothing readable on this rank (yet): any image of the right shape
                last = torch.zeros(1, 3, size, size)
            out = backbone((x if real else last).to(device))
            if real:
                f = out["cls"] if mode == "cls" else torch.cat([out["cls"], out["patch"].mean(1)], dim=1)
                feats.append(f.float().cpu())
                labels.append(y)
    finally:
        for root in fsdp:
            root.reshard()
    width = backbone.cfg.width * (1 if mode == "cls" else 2)
    x = torch.cat(feats) if feats else torch.zeros(0, width)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)
    if dist.is_initialized() and dp > 1:
        x, y = _all_gather_rows(x, device, group), _all_gather_rows(y, device, group)
    return x, y


def knn_now(cfg, roots, backbone, *, device, dp_rank=0, dp=1, group=None):
    """kNN top-1 (percent) of the live `backbone` (inside the modules `roots`) on every rank (see the module
    docstring)."""
    e = cfg.eval
    was_training = backbone.training
    backbone.eval()
    sides = []
    for spec, split in ((e.train_source or cfg.data.source, "train"), (cfg.data.val_source, "val")):
        source = source_from_spec(spec, split, seed=cfg.train.seed)
        indices, _ = eval_indices(source, e.max_images, seed=cfg.train.seed, split=split)
        kw = {"mode": e.features, "batch_size": e.batch_size, "device": device, "dp_rank": dp_rank, "dp": dp}
        sides.append(sharded_features(roots, backbone, source, cfg.data.global_crops_size, indices, group=group, **kw))
    backbone.train(was_training)
    (train_x, train_y), (val_x, val_y) = sides
    return knn_accuracy(train_x, train_y, val_x, val_y, k=e.knn_k, temperature=e.knn_temperature)
