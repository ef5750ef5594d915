"""The training tasks by objective.name: classes derived from fastvit.train.task.Task."""

from fastvit.train.clip import CLIPTask
from fastvit.train.web_dino import WebDINOTask
from fastvit.train.web_mae import WebMAETask

TASKS = {"web_dino": WebDINOTask, "web_mae": WebMAETask, "clip": CLIPTask}


def build_task(cfg, device):
    """The task of cfg.objective.name, its modules initialised on `device`."""
    if cfg.objective.name not in TASKS:
        raise ValueError(f"objective.name={cfg.objective.name!r} has no training task; choose one of {sorted(TASKS)}")
    return TASKS[cfg.objective.name](cfg, device)


def pipelined(task, mesh):
    """The pipeline-parallel version of `task` (parallel.pp > 1), where its class supports one."""
    if not task.supports_pipeline:
        names = " / ".join(name for name, cls in TASKS.items() if cls.supports_pipeline)
        raise ValueError(
            f"parallel.pp={mesh.dims.pp}: pipeline parallelism trains objective.name={names} only, "
            f"not {task.cfg.objective.name!r}; use parallel.tp and FSDP for it"
        )
    return task.pipelined(mesh)
