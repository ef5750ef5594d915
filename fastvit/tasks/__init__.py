"""The registry of objectives: one line per objective, the package whose SPEC (fastvit.tasks.spec.ObjectiveSpec)
declares it. The first one is the default objective.name."""

import importlib

from fastvit.tasks.spec import ObjectiveSpec

OBJECTIVES = [
    "fastvit.tasks.web_dino",
    "fastvit.tasks.web_mae",
    "fastvit.tasks.clip",
]


def specs():
    """{name: ObjectiveSpec} of the registered objectives, in registry order."""
    out = {}
    for module in OBJECTIVES:
        spec = importlib.import_module(module).SPEC
        out[spec.name] = spec
    return out


def spec_of(name):
    """The ObjectiveSpec of objective.name=name; ValueError listing the registered ones otherwise."""
    registered = specs()
    if name not in registered:
        raise ValueError(f"objective.name={name!r} is not a registered objective; choose one of {sorted(registered)}")
    return registered[name]


__all__ = ["OBJECTIVES", "ObjectiveSpec", "spec_of", "specs"]
