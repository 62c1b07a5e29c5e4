"""spconv 2.x on pointsparse: the API of ``spconv.pytorch`` (1-, 2- and 3-D tensors, convs, max
pooling) and what detection code touches at ``spconv`` (``__version__``, ``constants``, ``utils``'s
voxel generators).

Code written for spconv runs after changing one import::

    import pointsparse.compat.spconv as spconv       # instead of: import spconv.pytorch as spconv

or, to leave the import lines alone, ``pointsparse.compat.spconv.install()`` first: ``spconv``,
``spconv.pytorch`` and their submodules (``core``, ``conv``, ``modules``, ``pool``, ``utils``,
``constants``) then resolve here, and ``cumm.tensorview`` too where cumm is not installed.
Provided: ``SparseConvTensor`` (``replace_feature``, ``dense``, ``indice_dict``, ``from_dense``,
writable ``indices``), ``SubMConv1d``-``3d``, ``SparseConv1d``-``3d`` (with padding; every reached
cell inside the output's spatial shape), ``SparseConvTranspose1d``-``3d`` (generative, no
``output_padding``), ``SparseInverseConv1d``-``3d`` on an ``indice_key``, ``SparseMaxPool1d``-``3d``,
``SparseGlobalMaxPool`` / ``AvgPool``, ``SparseSequential``, ``SparseModule``, ``SparseBatchNorm``,
``SparseReLU``, ``ToDense``, ``AddTable`` / ``ConcatTable`` / ``JoinTable``, ``ConvAlgo`` (accepted,
ignored), ``Point2VoxelCPU3d`` / ``GPU3d`` and ``PointToVoxel``. spconv checkpoints (KRSC, or RSCK
by shape) load unchanged. 4-D classes exist and raise ``NotImplementedError`` when built; any other
spconv name raises an ``AttributeError`` that names it.
"""

import sys

from . import constants, conv, core, modules, pool, utils
from .conv import (SparseConv1d, SparseConv2d, SparseConv3d, SparseConv4d, SparseConvolution, SparseConvTranspose1d,
                   SparseConvTranspose2d, SparseConvTranspose3d, SparseConvTranspose4d, SparseInverseConv1d,
                   SparseInverseConv2d, SparseInverseConv3d, SparseInverseConv4d, SubMConv1d, SubMConv2d, SubMConv3d,
                   SubMConv4d)
from .core import AlgoHint, ConvAlgo, IndiceData, SparseConvTensor
from .modules import (AddTable, ConcatTable, Identity, JoinTable, RemoveGrid, SparseBatchNorm, SparseIdentity,
                      SparseModule, SparseReLU, SparseSequential, ToDense, assign_name_for_sparse_modules)
from .pool import (SparseGlobalAvgPool, SparseGlobalMaxPool, SparseMaxPool, SparseMaxPool1d, SparseMaxPool2d,
                   SparseMaxPool3d, SparseMaxPool4d)
from .utils import Point2VoxelCPU3d, Point2VoxelGPU3d, PointToVoxel, gather_features_by_pc_voxel_id

__version__ = "2.3.8"  # the spconv release this API follows (OpenPCDet reads float(__version__[2:]))
SPCONV_VERSION_NUMBERS = [2, 3, 8]

# spconv names this layer leaves out, and why (any other unknown name gets the generic message).
NOT_PROVIDED = {
    "SparseAvgPool1d": "average pooling (GPU-only in spconv)",
    "SparseAvgPool2d": "average pooling (GPU-only in spconv)",
    "SparseAvgPool3d": "average pooling (GPU-only in spconv)",
    "AddTableMisaligned": "adding tensors at different indices",
    "functional": "spconv's autograd functions over its own index pairs",
    "ops": "spconv's index-pair ops (pointsparse builds kernel maps itself)",
    "hash": "spconv's GPU hash tables",
    "tables": "the module holding AddTable/ConcatTable/JoinTable (use them from here)",
    "Point2VoxelCPU1d": "1-D voxel generators", "Point2VoxelCPU2d": "2-D voxel generators",
    "Point2VoxelCPU4d": "4-D voxel generators", "Point2VoxelGPU1d": "1-D voxel generators",
    "Point2VoxelGPU2d": "2-D voxel generators", "Point2VoxelGPU4d": "4-D voxel generators",
    "VoxelGenerator": "spconv 1.x's voxel generator (2.x has Point2VoxelCPU3d)",
    "VoxelGeneratorV2": "spconv 1.x's voxel generator (2.x has Point2VoxelCPU3d)",
}


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    why = NOT_PROVIDED.get(name, "not part of what this layer provides")
    raise AttributeError(f"pointsparse.compat.spconv (standing in for spconv) does not provide spconv's "
                         f"{name!r}: {why}; see the compat table in pointsparse's README")


def install(replace: bool = False) -> None:
    """Registers this module as ``spconv`` and ``spconv.pytorch`` (and their submodules) in
    ``sys.modules``; ``cumm.tensorview`` as well where cumm is not installed."""
    import importlib.util
    from types import ModuleType

    from .. import install_aliases

    this = sys.modules[__name__]
    aliases = {"spconv": this, "spconv.pytorch": this, "spconv.core": core, "spconv.pytorch.core": core,
               "spconv.pytorch.conv": conv, "spconv.pytorch.modules": modules, "spconv.pytorch.pool": pool,
               "spconv.utils": utils, "spconv.pytorch.utils": utils, "spconv.constants": constants,
               "spconv.pytorch.constants": constants}
    if importlib.util.find_spec("cumm") is None and "cumm" not in sys.modules:
        from . import tensorview

        cumm = ModuleType("cumm", "stand-in for cumm: only tensorview (pointsparse.compat.spconv)")
        cumm.tensorview = tensorview
        aliases.update({"cumm": cumm, "cumm.tensorview": tensorview})
    install_aliases(aliases, replace)


# `spconv.pytorch` as an attribute too, for code that imports `spconv` and then says spconv.pytorch.X.
pytorch = sys.modules[__name__]

__all__ = ["AddTable", "AlgoHint", "ConcatTable", "ConvAlgo", "Identity", "IndiceData", "JoinTable", "Point2VoxelCPU3d",
           "Point2VoxelGPU3d", "PointToVoxel", "RemoveGrid", "SPCONV_VERSION_NUMBERS", "SparseBatchNorm",
           "SparseConv1d", "SparseConv2d", "SparseConv3d", "SparseConv4d", "SparseConvTensor", "SparseConvTranspose1d",
           "SparseConvTranspose2d", "SparseConvTranspose3d", "SparseConvTranspose4d", "SparseConvolution",
           "SparseGlobalAvgPool", "SparseGlobalMaxPool", "SparseIdentity", "SparseInverseConv1d", "SparseInverseConv2d",
           "SparseInverseConv3d", "SparseInverseConv4d", "SparseMaxPool", "SparseMaxPool1d", "SparseMaxPool2d",
           "SparseMaxPool3d", "SparseMaxPool4d", "SparseModule", "SparseReLU", "SparseSequential", "SubMConv1d",
           "SubMConv2d", "SubMConv3d", "SubMConv4d", "ToDense", "__version__", "assign_name_for_sparse_modules",
           "constants", "conv", "core", "gather_features_by_pc_voxel_id", "install", "modules", "pool", "pytorch",
           "utils"]
