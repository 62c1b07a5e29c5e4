"""Arrays from the ecosystem in and out: numpy, torch and cupy (zero-copy through DLPack)."""

from typing import Any

import numpy as np
import torch
from torch import Tensor


def is_cupy(array: Any) -> bool:
    return type(array).__module__.split(".")[0] == "cupy"


def as_torch(array: Any) -> Tensor:
    """A torch tensor viewing ``array``: a tensor as is, a numpy array through ``from_numpy``, a
    cupy array (or anything with ``__dlpack__``) through DLPack on its own device, without a copy;
    lists and scalars through ``torch.as_tensor``."""
    if isinstance(array, Tensor):
        return array
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array))
    if hasattr(array, "__dlpack__"):
        return torch.from_dlpack(array)
    return torch.as_tensor(array)


def like(tensor: Tensor, template: Any) -> Any:
    """``tensor`` in the array type of ``template``: numpy for numpy, cupy for cupy (DLPack,
    zero-copy), a tensor otherwise."""
    if isinstance(template, np.ndarray):
        return tensor.cpu().numpy()
    if is_cupy(template):
        import cupy

        return cupy.from_dlpack(tensor.contiguous())
    return tensor
