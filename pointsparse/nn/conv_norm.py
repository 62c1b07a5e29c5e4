"""A conv followed by a batch norm (and a residual block's addition and ReLU), the norm fused into
the conv in eval mode."""

from typing import Optional

from ..tensor import SparseTensor
from .conv import SparseConv3d
from .feature_ops import BatchNorm


def conv_norm(conv: SparseConv3d, norm: BatchNorm, x: SparseTensor,
              residual: Optional[SparseTensor] = None) -> SparseTensor:
    """``norm(conv(x))``, or ``norm.add_relu(conv(x), residual)`` with a residual. In eval mode the
    norm, the addition and the ReLU are the conv's epilogue (:meth:`BatchNorm.epilogue`): on the CPU's
    fused dataflow they run on each block of output rows while it is in cache, not as a pass of their
    own. The conv is called as a module, so its hooks (profiler, bench) see it either way."""
    epilogue = norm.epilogue(residual)
    if epilogue is not None:
        return conv(x, epilogue=epilogue)
    y = conv(x)
    return norm(y) if residual is None else norm.add_relu(y, residual)
