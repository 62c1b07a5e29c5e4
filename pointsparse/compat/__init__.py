"""Run code written for other engines on pointsparse by changing one import.

* :mod:`pointsparse.compat.torchsparse`: TorchSparse 2.1 (``SparseTensor``, ``nn.Conv3d``,
  point-voxel helpers, ``utils``); ``pointsparse.compat.torchsparse.install()`` makes
  ``import torchsparse`` and its submodules resolve to it.
* :mod:`pointsparse.compat.spconv`: spconv 2.x (``SparseConvTensor``, ``SubMConv3d``,
  ``SparseConv3d``, ``SparseInverseConv3d``, ``SparseSequential``); ``install()`` makes
  ``import spconv.pytorch as spconv`` resolve to it.

Checkpoints of either engine load into these modules unchanged (their parameters keep the foreign
names and layouts, converted on the fly); :mod:`pointsparse.convert` moves them to native models.
"""

import sys
import warnings
from types import ModuleType
from typing import Dict


def install_aliases(aliases: Dict[str, ModuleType], replace: bool = False) -> None:
    """Registers each module under its alias in ``sys.modules``. An alias already taken (the real
    engine imported) is left alone with a warning unless ``replace``."""
    for name, module in aliases.items():
        present = sys.modules.get(name)
        if present is not None and present is not module and not replace:
            warnings.warn(f"{name} is already imported ({getattr(present, '__file__', present)}); "
                          f"leaving it in place (pass replace=True to override)", stacklevel=3)
            continue
        sys.modules[name] = module


_warned = set()


def warn_once(message: str) -> None:
    """A UserWarning the first time ``message`` is seen in this process."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)
