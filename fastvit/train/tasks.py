"""The training task of cfg.objective.name, from the objective registry (fastvit/tasks/__init__.py)."""

from fastvit.tasks import spec_of, specs


def build_task(cfg, device):
    """The task of cfg.objective.name, its modules initialised on `device`."""
    return spec_of(cfg.objective.name).task_cls()(cfg, device)


def pipelined(task, mesh):
    """The pipeline-parallel version of `task` (parallel.pp > 1), where its class supports one."""
    if not task.supports_pipeline:
        names = " / ".join(name for name, spec in specs().items() if spec.task_cls().supports_pipeline)
        raise ValueError(
            f"parallel.pp={mesh.dims.pp}: pipeline parallelism trains objective.name={names} only, "
            f"not {task.cfg.objective.name!r}; use parallel.tp and FSDP for it"
        )
    return task.pipelined(mesh)
