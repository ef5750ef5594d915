"""The config section objective.web_dino."""

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class WebDINOConfig:
    dino_out_dim: int = 131072
    ibot_out_dim: int = 131072
    head_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 384
    ibot_bottleneck_dim: int = 256
    centering: Literal["sinkhorn", "softmax"] = "sinkhorn"
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    teacher_temp_warmup: float = 0.04
    teacher_temp_warmup_steps: int = 37500
    momentum_teacher: float = 0.994
    momentum_teacher_final: float = 1.0
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    loss_backend: str = "auto"  # auto | triton | torch: the Sinkhorn and prototype cross-entropy kernels
