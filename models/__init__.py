"""Models built from pointsparse.nn (installed as ``pointsparse.models``), with a registry by name."""

from typing import Callable, Dict

from torch import nn

from .minkunet import MinkUNet, minkunet18, minkunet34

MODELS: Dict[str, Callable[..., nn.Module]] = {"minkunet18": minkunet18, "minkunet34": minkunet34}


def build_model(name: str, **kwargs) -> nn.Module:
    """A registered model by name, e.g. ``build_model("minkunet18", num_classes=19, cr=0.5)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "MinkUNet", "build_model", "minkunet18", "minkunet34"]
