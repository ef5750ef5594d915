"""The task contract that train_step (fastvit/train/step.py) and the loop call, and the base of teacher-less tasks.

A task owns its modules, its data and its objective; the step and the loop own the order of things. What a
task must provide is declared here as abstract methods, what it may change as plain attributes and methods
with defaults; the loop never probes a task with hasattr.

    task = build_task(cfg, device)               # fastvit/train/tasks.py: the registered objective's Task
    if pp > 1: task = task.pipelined(mesh)       # only where supports_pipeline is True
    task.wrap(wrap_fn)                           # data / tensor parallel wrappers (parallelize_pair)
    loader = task.build_loader(batch_size=..., rank=..., world_size=..., device=...)
    sched = task.schedules(step, total)          # per-step values of the objective (logged)
    with task.gradient_sync(last_micro_batch):   # DDP / FSDP2 reduce only on the last micro-batch
        terms = task.forward_backward(batch, sched, scale=1 / accum)   # forward AND backward
    # clip over task.grad_norm_group, optimizer.step(), then:
    task.after_step(sched)                       # e.g. the EMA teacher update

Each objective's task lives in its folder (fastvit/tasks/<name>/task.py); one with an EMA teacher sets `teacher`
(and may have a pipelined version), the others derive from StudentOnlyTask.
"""

import abc
from typing import ClassVar

from fastvit.parallel.parallelize import gradient_sync
from fastvit.train.checkpoint import load_trainable_state, trainable_state


class Task(abc.ABC):
    """One training objective as the step sees it.

    Attributes: `cfg` (the root config), `student` (the trainable module, for the optimizer and the gradient
    norm), `student_dp` (what the parallel wrapper returned: the module to call), `teacher` (EMA copy or None),
    `loss_keys` (names of the loss terms forward_backward returns, ending in "total").
    Capabilities: `supports_pipeline` (pipelined() returns a pipeline-parallel version), `grad_norm_group`
    (the process group over which the squared gradient norms of the ranks' parameters are summed: the pipeline
    ranks, each holding other parameters; None when every rank holds all of them, sharded or not).
    """

    loss_keys: ClassVar[tuple[str, ...]]
    supports_pipeline: ClassVar[bool] = False
    teacher = None
    grad_norm_group = None

    @property
    @abc.abstractmethod
    def backbone_cfg(self):
        """The ViTConfig of the trained backbone (the whole model's, also on a pipeline stage)."""

    @abc.abstractmethod
    def wrap(self, wrap_fn):
        """Applies wrap_fn(student, teacher_or_None) -> (student_dp, teacher_dp) to the task's modules."""

    @abc.abstractmethod
    def build_loader(self, *, batch_size, rank, world_size, device):
        """The endless, resumable batch iterator of one data-parallel rank (state_dict / load_state_dict)."""

    @abc.abstractmethod
    def synthetic_batch(self, batch_size, device, seed=0):
        """A batch of random inputs with the shapes build_loader's batches have (for `fastvit bench step`)."""

    @abc.abstractmethod
    def flops_per_step(self, batch_per_rank):
        """Model FLOPs of one optimizer step's forward and backward on one rank's batch."""

    @abc.abstractmethod
    def state_dict(self, optimizer, *, with_optim=None):
        """The torch.distributed.checkpoint state of modules, optimizer and objective."""

    @abc.abstractmethod
    def load_state_dict(self, state, optimizer):
        """Loads what state_dict returned (after torch.distributed.checkpoint filled it in place)."""

    def losses(self, batch, sched):
        """The dict of 0-d loss tensors of one micro-batch (loss_keys), from the forward only."""
        raise NotImplementedError(f"{type(self).__name__} computes its losses inside forward_backward")

    def forward_backward(self, batch, sched, *, scale=1.0):
        """Forward and backward of one micro-batch, the gradients of scale * total accumulated into the
        student's; returns the loss terms (0-d tensors, detached, on the training device) by loss_keys."""
        losses = self.losses(batch, sched)
        (losses["total"] * scale).backward()
        return {k: losses[k].detach() for k in self.loss_keys}

    def gradient_sync(self, enabled):
        """Context for one micro-batch's forward_backward: gradients are reduced over the data-parallel ranks
        when enabled, kept local (accumulated) otherwise; DDP (no_sync) and FSDP2 (set_requires_gradient_sync)."""
        return gradient_sync(self.student_dp, enabled)

    def schedules(self, step, total):
        """Per-step values of the objective (floats or 0-d tensors, which are read only when a line is logged)."""
        return {}

    def after_step(self, sched):
        """What follows the optimizer step (the EMA teacher update)."""
        return None

    @abc.abstractmethod
    def live_eval_modules(self):
        """(roots, backbone) for train.eval_every's kNN on every rank from the live, sharded weights
        (fastvit.eval.sharded): the wrapped modules FSDP / TP made roots (their parameters are unsharded around
        the evaluation) and the backbone inside them whose features are scored, called the same on every rank."""

    def pipelined(self, mesh):
        """The pipeline-parallel version of this task over mesh.pp (supports_pipeline tasks only)."""
        raise ValueError(f"{type(self).__name__} has no pipeline-parallel version")


class StudentOnlyTask(Task):
    """The parts of a task without a teacher: wrapping, checkpoint state, no per-step schedule or EMA."""

    @property
    def backbone_cfg(self):
        return self.student.backbone.cfg

    def wrap(self, wrap_fn):
        self.student_dp, _ = wrap_fn(self.student, None)

    def state_dict(self, optimizer, *, with_optim=None):
        return trainable_state(self.student_dp, optimizer, with_optim=with_optim)

    def load_state_dict(self, state, optimizer):
        load_trainable_state(self.student_dp, optimizer, state)

    def live_eval_modules(self):
        return [self.student_dp], self.student.backbone
