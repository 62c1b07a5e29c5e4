"""spconv 2.x's ``spconv.pytorch`` API (3-D) on pointsparse.

Code written for spconv runs after changing one import::

    import pointsparse.compat.spconv as spconv       # instead of: import spconv.pytorch as spconv

or, to leave the import lines alone, ``pointsparse.compat.spconv.install()`` first (``spconv`` and
``spconv.pytorch`` then resolve here). Provided: ``SparseConvTensor`` (``replace_feature``,
``dense``, ``indice_dict``, ``from_dense``), ``SubMConv3d``, ``SparseConv3d`` (with padding; every
reached cell inside the output's spatial shape), ``SparseConvTranspose3d`` (generative, no
``output_padding``), ``SparseInverseConv3d`` on an ``indice_key``, ``SparseSequential``,
``SparseModule``, ``SparseBatchNorm``, ``SparseReLU``, ``ToDense``, ``ConvAlgo`` (accepted, ignored).
spconv checkpoints (KRSC, or RSCK by shape) load unchanged. Not provided: 1-D/2-D/4-D convs,
pooling, ``PointToVoxel`` and the tables.
"""

import enum
import sys

from .conv import SparseConv3d, SparseConvolution, SparseConvTranspose3d, SparseInverseConv3d, SubMConv3d
from .core import IndiceData, SparseConvTensor
from .modules import RemoveGrid, SparseBatchNorm, SparseIdentity, SparseModule, SparseReLU, SparseSequential, ToDense

__all__ = ["ConvAlgo", "IndiceData", "RemoveGrid", "SparseBatchNorm", "SparseConv3d", "SparseConvTensor",
           "SparseConvTranspose3d", "SparseConvolution", "SparseIdentity", "SparseInverseConv3d", "SparseModule",
           "SparseReLU", "SparseSequential", "SubMConv3d", "ToDense", "install"]


class ConvAlgo(enum.Enum):
    """spconv's kernel choice; accepted and ignored (pointsparse.ConvConfig picks kernels)."""

    Native = 0
    MaskImplicitGemm = 1
    MaskSplitImplicitGemm = 2


def install(replace: bool = False) -> None:
    """Registers this module as ``spconv`` and ``spconv.pytorch`` in ``sys.modules``."""
    from .. import install_aliases

    this = sys.modules[__name__]
    install_aliases({"spconv": this, "spconv.pytorch": this, "spconv.pytorch.core": sys.modules[__name__ + ".core"],
                     "spconv.pytorch.conv": sys.modules[__name__ + ".conv"],
                     "spconv.pytorch.modules": sys.modules[__name__ + ".modules"]}, replace)


# `spconv.pytorch` as an attribute too, for code that imports `spconv` and then says spconv.pytorch.X.
pytorch = sys.modules[__name__]
