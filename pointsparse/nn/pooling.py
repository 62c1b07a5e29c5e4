"""SparseMaxPool3d: max pooling over a conv's kernel map (:func:`pointsparse.functional.max_pool3d`)."""

from typing import Optional

from torch import nn

from .. import functional as F
from ..config import ConvConfig, OutputRule
from ..kmap import KernelMapKey
from ..offsets import IntOrTriple, as_triple
from ..tensor import SparseTensor


class SparseMaxPool3d(nn.Module):
    """Per channel, the maximum over each output's kernel window. ``stride`` defaults to
    ``kernel_size`` (``torch.nn.MaxPool3d``'s rule); stride 1 pools in place (submanifold). The
    outputs follow ``outputs`` as a conv's do (``OutputRule.REACHED`` with ``padding``: spconv's
    cells); the gradient goes to each output's arg-max input row."""

    def __init__(self, kernel_size: IntOrTriple, stride: Optional[IntOrTriple] = None, *, dilation: IntOrTriple = 1,
                 outputs: OutputRule = OutputRule.OCCUPIED, padding: Optional[IntOrTriple] = None,
                 config: Optional[ConvConfig] = None):
        super().__init__()
        self.kernel_size = as_triple(kernel_size, "kernel_size", planar=1)
        self.stride = self.kernel_size if stride is None else as_triple(stride, "stride", planar=1)
        self.dilation = as_triple(dilation, "dilation", planar=1)
        self.outputs = outputs
        self.padding = None if padding is None else as_triple(padding, "padding", minimum=0, planar=0)
        KernelMapKey.of((1, 1, 1), self.kernel_size, self.stride, self.dilation, False, outputs, self.padding)
        self.config = config or ConvConfig()

    def forward(self, x: SparseTensor) -> SparseTensor:
        return F.max_pool3d(x, self.kernel_size, self.stride, self.dilation, outputs=self.outputs,
                                  padding=self.padding, config=self.config)

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}, stride={self.stride}"
        if self.dilation != (1, 1, 1):
            text += f", dilation={self.dilation}"
        if self.outputs is not OutputRule.OCCUPIED:
            text += f", outputs={self.outputs}"
        return text + (f", padding={self.padding}" if self.padding is not None else "")
