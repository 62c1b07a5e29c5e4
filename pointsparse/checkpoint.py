"""Checkpoints that hold only tensors and plain types, written atomically and read without unpickling code.

``torch.load(..., weights_only=False)`` runs whatever a file's pickle asks for, so a checkpoint
passed around between people could execute code when evaluated or resumed. Everything pointsparse
writes is tensors, numbers, strings, lists, tuples and dicts (the numpy RNG state is stored as a
tensor, see :func:`rng_state`), and everything it reads goes through :func:`load`, which refuses
anything else with a clear error.
"""

import os
import pickle
import random
from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickled objects beyond tensors and plain types."""


def save(obj: Dict, path: Union[str, Path]) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Union[str, Path], map_location: Union[str, torch.device, None] = None) -> Dict:
    """The checkpoint at ``path``, loaded with ``weights_only=True``; UnsafeCheckpointError when it
    carries other pickled objects (they could run code), FileNotFoundError when it is missing."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()
        raise UnsafeCheckpointError(
            f"{path} holds pickled objects other than tensors and plain types, which could run code when "
            f"loaded; pointsparse refuses it. Re-save what you trust as tensors and plain types "
            f"(torch's reason: {reason[-1] if reason else error})") from None


def rng_state() -> Dict[str, object]:
    """torch, numpy and Python RNG states as tensors and plain types (numpy's as a tensor of keys)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate()}


def set_rng_state(state: Dict[str, object]) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
