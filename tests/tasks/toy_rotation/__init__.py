"""A toy objective that lives in one folder: rotation prediction (Gidaris et al. 2018, "Unsupervised
Representation Learning by Predicting Image Rotations"): the backbone's CLS token classifies which of 0/90/180/270
degrees an image was turned by. tests/tasks/test_adding_an_objective.py adds it with one registry line."""

from dataclasses import dataclass

from fastvit.tasks.spec import ObjectiveSpec


@dataclass(kw_only=True)
class RotationConfig:
    rotations: int = 4  # quarter turns told apart
    label_smoothing: float = 0.0


SPEC = ObjectiveSpec(
    name="rotation",
    config_cls=RotationConfig,
    task="toy_rotation.task:RotationTask",
    resume_fixed_keys=("rotations",),
)
