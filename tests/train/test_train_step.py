"""train_step: one host sync per optimizer step, gradient reduction on the last micro-batch only (DDP and FSDP2),
and the process group a GPU launch creates."""

import contextlib
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

import fastvit.train as train_pkg
from fastvit.train.loop import build_training
from fastvit.train.optim import build_optimizer
from fastvit.train.step import autocast_for, train_step

TRAIN_DIR = str(Path(train_pkg.__file__).parent)
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def count_host_reads(monkeypatch):
    """Counts the reads of tensor values on the host (item, tolist, bool / float / int of a tensor) made by code
    in fastvit/train/, the loop's and the tasks' own (ops and objectives have their own budgets)."""
    calls = []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(TRAIN_DIR):
                calls.append((_name, caller, sys._getframe(1).f_lineno))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    yield calls


def _steps(run, batches, n, first=0):
    cfg = run.cfg
    autocast = autocast_for(cfg, run.device)
    return [
        train_step(run.task, run.optimizer, batches, step=s, total=10, cfg_optim=cfg.optim, autocast=autocast).finite
        for s in range(first, first + n)
    ]


@pytest.mark.parametrize("objective", ["web_dino", "web_mae"])
def test_one_host_sync_per_optimizer_step(tmp_path, monkeypatch, objective):
    """The old loop read, per micro-batch, the loss's finiteness (twice: .item() and the any-rank flag) and each
    loss term, then the gradient norm: 2 x (2 + 5) + 1 values a Web-DINO step here; train_step reads the
    gradient norm and the finiteness flag together, once."""
    extra = [f"objective.name={objective}", "optim.grad_accum=2"]
    if objective == "web_mae":
        extra.append("objective.web_mae.decoder_width=32")
    run = build_training(tiny_config(tmp_path, *extra))
    batch = run.task.synthetic_batch(run.batch_per_rank, run.device)
    batches = iter(lambda: batch, None)
    assert all(_steps(run, batches, 1))  # warm-up: lazily built things may read once
    with count_host_reads(monkeypatch) as calls:
        assert all(_steps(run, batches, 3, first=1))
    assert len(calls) == 3, calls


class _RecordingTask:
    """A stand-in task that records, per micro-batch, whether gradients were to be reduced."""

    loss_keys = ("total",)
    grad_norm_group = None

    def __init__(self):
        self.student = torch.nn.Linear(3, 1)
        self.synced = []

    def schedules(self, step, total):
        return {}

    @contextlib.contextmanager
    def gradient_sync(self, enabled):
        self.synced.append(enabled)
        yield

    def forward_backward(self, batch, sched, *, scale=1.0):
        loss = self.student(batch["x"]).square().mean()
        (loss * scale).backward()
        return {"total": loss.detach()}

    def after_step(self, sched):
        pass


def test_gradients_are_reduced_on_the_last_micro_batch_only(tmp_path):
    task, cfg = (
        _RecordingTask(),
        tiny_config(tmp_path, "optim.grad_accum=3", "optim.warmup_steps=0", "optim.clip_grad=0"),
    )
    opt = build_optimizer(task.student.named_parameters(), 1, cfg.optim)
    x = torch.randn(4, 3)
    loss = task.student(x).square().mean()
    one_grad = torch.autograd.grad(loss, task.student.weight)[0]
    batches = iter(lambda: {"x": x}, None)
    out = train_step(task, opt, batches, step=0, total=1, cfg_optim=cfg.optim, autocast=contextlib.nullcontext())
    assert task.synced == [False, False, True]
    assert out.finite and out.terms.shape == (1,)
    assert out.terms[0].item() == pytest.approx(loss.item())  # mean of 3 equal micro-batch losses
    assert out.grad_norm > 0
    assert torch.allclose(task.student.weight.grad, one_grad, atol=1e-6)  # 3 x (1/3) of one micro-batch's


def _fsdp_accumulates(rank, world_size):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from fastvit.parallel.parallelize import gradient_sync

    torch.manual_seed(0)
    model = fully_shard(torch.nn.Linear(4, 4), mesh=init_device_mesh("cpu", (world_size,)))
    x = torch.randn(2, 4) * (rank + 1)
    with gradient_sync(model, False):
        model(x).sum().backward()
    deferred = all(p.grad is None for p in model.parameters())  # FSDP2 keeps the unsharded grads to itself
    with gradient_sync(model, True):
        model(x).sum().backward()
    return deferred, [p.grad.full_tensor() for p in model.parameters()]


@pytest.mark.multirank
def test_fsdp2_defers_the_reduce_scatter_until_the_synced_micro_batch():
    from fastvit.testing import run_ranks

    (deferred0, grads0), (deferred1, grads1) = run_ranks(_fsdp_accumulates, 2)
    assert deferred0 and deferred1
    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 4)
    x0 = torch.randn(2, 4)  # what every rank drew after the same initialisation
    for x in (x0, 2 * x0):  # each rank's two micro-batches, reduced (averaged) over the 2 ranks
        (2 * ref(x).sum() / 2).backward()
    for got, want in zip(grads0, [ref.weight.grad, ref.bias.grad]):
        torch.testing.assert_close(got, want)
    for a, b in zip(grads0, grads1):
        torch.testing.assert_close(a, b)


def test_gpu_launch_creates_a_backend_per_device_type(monkeypatch):
    """NCCL refuses CPU tensors: a torchrun launch on GPUs must also have gloo for the host tensors."""
    import torch.distributed as dist

    from fastvit.parallel import distributed

    got = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend=None, **kw: got.update(backend=backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 1)
    assert distributed.init_distributed()[2] == torch.device("cuda", 0)
    assert got["backend"] == "cpu:gloo,cuda:nccl"
