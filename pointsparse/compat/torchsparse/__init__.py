"""TorchSparse 2.1's Python API on pointsparse.

Code written for TorchSparse runs after::

    import pointsparse.compat.torchsparse
    pointsparse.compat.torchsparse.install()   # `import torchsparse` and its submodules now resolve here

    import torchsparse
    import torchsparse.nn as spnn
    from torchsparse.utils.quantize import sparse_quantize

Coordinates follow TorchSparse 2.1: (batch, x, y, z) cell indices of the tensor stride
(``floor(c / s)``); conversion to pointsparse's multiples of the stride happens inside. TorchSparse
``state_dict`` s load unchanged. Of ``torchsparse.backend`` (TorchSparse's compiled internals) only
what model code calls directly is provided: ``GPUHashTable`` (on every device) and the hash
functions.
"""

import warnings

from . import backend, backends, nn, utils
from .tensor import PointTensor, SparseTensor

__version__ = "2.1.0+pointsparse"
__all__ = ["PointTensor", "SparseTensor", "backend", "backends", "cat", "generative_add", "install", "nn", "tune", "utils"]


def cat(inputs):
    """Features of tensors at equal coordinates concatenated along channels (first tensor's
    coordinates, stride and cache)."""
    import torch

    return inputs[0].derive(torch.cat([x.feats for x in inputs], 1))


def generative_add(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """Sum over the union of two tensors' coordinates (features of shared cells added)."""
    import torch

    big, small = (a, b) if a.feats.shape[0] >= b.feats.shape[0] else (b, a)
    coords, inverse = torch.unique(torch.cat([big.coords, small.coords]), dim=0, return_inverse=True)
    feats = big.feats.new_zeros((coords.shape[0], big.feats.shape[1])).index_add(
        0, inverse, torch.cat([big.feats, small.feats]))
    out = SparseTensor(feats, coords.int(), big.stride, big.spatial_range)
    out._caches = big._caches.fork()
    return out


def tune(*args, **kwargs) -> None:
    """Accepted and ignored with a warning: tune native models with :func:`pointsparse.tune`."""
    warnings.warn("torchsparse.tune is ignored by pointsparse's compatibility layer; "
                  "use pointsparse.tune on a native model", stacklevel=2)


def install(replace: bool = False) -> None:
    """Registers this package as ``torchsparse`` (and its submodules under TorchSparse's names) in
    ``sys.modules``."""
    import sys

    from .. import install_aliases

    this = sys.modules[__name__]
    functional = nn.functional
    aliases = {"torchsparse": this, "torchsparse.tensor": sys.modules[__name__ + ".tensor"],
               "torchsparse.operators": this, "torchsparse.backends": backends, "torchsparse.backend": backend,
               "torchsparse.nn": nn, "torchsparse.nn.modules": nn, "torchsparse.nn.utils": nn.utils,
               "torchsparse.nn.functional": functional, "torchsparse.utils": utils}
    for sub in ("conv", "devoxelize", "voxelize", "hash", "query", "count", "pooling", "activation"):
        aliases[f"torchsparse.nn.functional.{sub}"] = functional
    for sub in ("quantize", "collate", "tensor_cache", "utils", "to_dense"):
        aliases[f"torchsparse.utils.{sub}"] = utils
    install_aliases(aliases, replace)
