"""EMA teacher update and the Web-DINO schedules, as plain functions of the step (DINOv2 ViT-g recipe)."""

import math

import torch


def _local(t):
    """The local shard of a DTensor (FSDP2 / TP parameter), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def ema_update_(teacher_params, student_params, momentum):
    """teacher <- momentum * teacher + (1 - momentum) * student, as one torch._foreach_lerp_ over local shards.

    The teacher must be sharded exactly like the student (DTensors are updated through their local tensors).
    """
    teacher = [_local(t.detach()) for t in teacher_params]
    student = [_local(s.detach()) for s in student_params]
    if len(teacher) != len(student):
        raise ValueError(f"ema_update_: {len(teacher)} teacher tensors but {len(student)} student tensors")
    for i, (t, s) in enumerate(zip(teacher, student)):
        if t.shape != s.shape:
            raise ValueError(f"ema_update_: tensor {i} has teacher shape {tuple(t.shape)} != student {tuple(s.shape)}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update_ momentum must lie in [0, 1], got {momentum}")
    if teacher:
        torch._foreach_lerp_(teacher, student, 1.0 - momentum)


def cosine_schedule(step, total, base, final, warmup_steps=0, warmup_start=0.0):
    """Linear warmup warmup_start -> base over warmup_steps, then cosine base -> final until `total`; final after."""
    if total < 1 or warmup_steps < 0 or warmup_steps > total:
        raise ValueError(
            f"cosine_schedule needs 0 <= warmup_steps <= total and total >= 1, got {warmup_steps}, {total}"
        )
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / warmup_steps
    if step >= total or total == warmup_steps:
        return final
    progress = (step - warmup_steps) / (total - warmup_steps)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def momentum_schedule(step, total, base=0.994, final=1.0):
    """Teacher EMA momentum: cosine base -> final over `total` steps."""
    return cosine_schedule(step, total, base, final)


def teacher_temp_schedule(step, warmup_steps, warmup_temp=0.04, temp=0.07):
    """Teacher temperature: linear warmup_temp -> temp over warmup_steps (37.5k in Web-DINO), then constant."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return temp
    return warmup_temp + (temp - warmup_temp) * step / warmup_steps


def last_layer_lr(step, freeze_steps, lr):
    """Learning rate of the heads' last (prototype) layers: 0 while frozen (the first 1250 steps), else lr."""
    return 0.0 if step < freeze_steps else lr
