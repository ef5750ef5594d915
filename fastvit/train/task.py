"""The task protocol the training loop calls (fastvit/train/loop.py), and the base of teacher-less tasks.

A task owns: `student` (trainable module), `teacher` (EMA copy or None), `student_dp` (what the parallel
wrapper returned), `loss_keys` (ending in "total"), `backbone_cfg` (its ViTConfig), and the methods
wrap(wrap_fn), build_loader(*, batch_size, rank, world_size, device), schedules(step, total) -> dict of
logged floats, losses(batch, sched) -> dict of scalar tensors, after_step(sched), flops_per_step(batch),
state_dict(optimizer, *, with_optim=None) and load_state_dict(state, optimizer).
Web-DINO (fastvit/train/web_dino.py) has a teacher; Web-MAE and CLIP derive from StudentOnlyTask.
"""

from fastvit.train.checkpoint import load_trainable_state, trainable_state


class StudentOnlyTask:
    """The parts of a task without a teacher: wrapping, checkpoint state, no per-step schedule or EMA."""

    teacher = None

    @property
    def backbone_cfg(self):
        return self.student.backbone.cfg

    def wrap(self, wrap_fn):
        self.student_dp, _ = wrap_fn(self.student, None)

    def schedules(self, step, total):
        return {}

    def after_step(self, sched):
        return None

    def state_dict(self, optimizer, *, with_optim=None):
        return trainable_state(self.student_dp, optimizer, with_optim=with_optim)

    def load_state_dict(self, state, optimizer):
        load_trainable_state(self.student_dp, optimizer, state)
