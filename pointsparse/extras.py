"""Optional extras: packages a feature uses where they load and the core never needs.

An extra can fail to load for reasons other than being absent: open3d's wheel imports the system
library libusb-1.0 and raises ImportError from inside the package where it is missing, and a
compiled extension built for another CUDA can raise anything at import. Every use goes through
``import_extra``, so whatever the reason, the user reads one error that names the extra, the
reason and the fix.
"""

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, Optional


@dataclass(frozen=True)
class Extra:
    """An optional package: the module to import and how to make it load."""

    module: str
    fix: str


EXTRAS: Dict[str, Extra] = {
    "open3d": Extra("open3d", "pip install open3d; on Debian/Ubuntu its wheel also needs the libusb-1.0 "
                              "system package (apt install libusb-1.0-0)"),
    "spconv": Extra("spconv.pytorch", "pip install spconv (its CPU package) or the spconv-cuXXX package "
                                      "matching your CUDA"),
    "cupy": Extra("cupy", "pip install cupy-cuda12x (or the package matching your CUDA)"),
}


class ExtraUnavailableError(ImportError):
    """An optional extra did not load; the message names it, why, and how to fix it."""


def import_extra(name: str, purpose: str) -> ModuleType:
    """The extra's module, or ``ExtraUnavailableError`` saying that ``purpose`` needs it."""
    extra = EXTRAS[name]
    try:
        return importlib.import_module(extra.module)
    except Exception as error:  # any failure inside the package, not only a missing module
        raise ExtraUnavailableError(
            f"{purpose} needs the optional extra {name}, which could not be imported "
            f"({type(error).__name__}: {error}). Fix: {extra.fix}") from error


def extra_unavailable_reason(name: str, purpose: str) -> Optional[str]:
    """None where the extra loads, else the message ``import_extra(name, purpose)`` would raise."""
    try:
        import_extra(name, purpose)
    except ExtraUnavailableError as error:
        return str(error)
    return None
