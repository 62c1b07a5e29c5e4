"""SparseConv3d: a module owning the weight of one sparse convolution."""

import math
from typing import Dict, Mapping, Optional, Union

import torch
from torch import nn

from .. import functional as F
from ..config import ConvConfig, OutputRule
from ..kmap import KernelMapKey
from ..offsets import IntOrTriple, as_triple
from ..tensor import SparseTensor
from .weight_mask import adopt_masked_state


class SparseConv3d(nn.Module):
    """Sparse 3-D convolution; ``weight [K, in_channels, out_channels]`` in ``kernel_offsets`` order.

    Stride 1 is submanifold; stride s > 1 downsamples to tensor stride ``t * s``; ``transposed``
    with stride s upsamples back to the finer tensor's coordinates; ``outputs=OutputRule.REACHED``
    outputs every cell the kernel reaches (spconv's rule, with ``padding``), ``generative`` makes a
    transposed conv create the finer cells (see :func:`functional.conv3d`).

    Arguments after ``stride`` are keyword-only: TorchSparse and spconv take ``padding`` fifth,
    so a positional call written for them fails here instead of silently meaning something else.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTriple = 3,
                 stride: IntOrTriple = 1, *, dilation: IntOrTriple = 1, bias: bool = False,
                 transposed: bool = False, outputs: OutputRule = OutputRule.OCCUPIED,
                 padding: Optional[IntOrTriple] = None, generative: bool = False,
                 config: Optional[ConvConfig] = None):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got {in_channels} -> {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = as_triple(kernel_size, "kernel_size", planar=1)
        self.stride = as_triple(stride, "stride", planar=1)
        self.dilation = as_triple(dilation, "dilation", planar=1)
        self.transposed = transposed
        self.outputs, self.generative = outputs, generative
        self.padding = None if padding is None else as_triple(padding, "padding", minimum=0, planar=0)
        # Checks the combination now rather than at the first forward.
        KernelMapKey.of((1, 1, 1), self.kernel_size, self.stride, self.dilation, transposed, outputs,
                        self.padding, None, generative)
        self.config = config or ConvConfig()
        volume = math.prod(self.kernel_size)
        self.weight = nn.Parameter(torch.empty(volume, in_channels, out_channels))  # [K, C_in, C_out]
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # TorchSparse's initialisation: uniform in +-1/sqrt(C * K), C the fan side of the conv.
        fan = (self.out_channels if self.transposed else self.in_channels) * self.weight.shape[0]
        bound = 1.0 / math.sqrt(fan)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def geometry(self) -> Dict[str, object]:
        """The keyword arguments of :func:`functional.conv3d` and :func:`pointsparse.kernel_map`
        that fix this layer's kernel map."""
        return dict(kernel_size=self.kernel_size, stride=self.stride, dilation=self.dilation,
                    transposed=self.transposed, outputs=self.outputs, padding=self.padding,
                    generative=self.generative)

    @property
    def identity_offset(self) -> int:
        """The offset computed as one GEMM (see :func:`functional.identity_offset`), or -1."""
        if self.outputs is not OutputRule.OCCUPIED:
            return -1
        return F.identity_offset(self.kernel_size, self.stride, self.transposed)

    def forward(self, x: SparseTensor, epilogue: Optional[F.Epilogue] = None) -> SparseTensor:
        """The convolution of ``x``; ``epilogue``: an eval-mode batch norm (residual, ReLU) to end
        with (:class:`functional.Epilogue`, see :func:`pointsparse.nn.conv_norm`)."""
        return F.conv3d(x, self.weight, bias=self.bias, config=self.config, epilogue=epilogue, **self.geometry)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        adopt_masked_state(self, state_dict, prefix)  # a pruned checkpoint into a dense layer
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"transposed={self.transposed}")
        if self.outputs is not OutputRule.OCCUPIED:
            text += f", outputs={self.outputs}"
        if self.padding is not None:
            text += f", padding={self.padding}"
        return text + (", generative=True" if self.generative else "")


def set_conv_configs(model: nn.Module, config: Union[ConvConfig, Mapping[str, ConvConfig], None]) -> None:
    """Sets ``config`` on every SparseConv3d of ``model``, or per layer from a map of module names
    (``dict(model.named_modules())`` names) to configs; unknown names raise ValueError."""
    if config is None:
        return
    convs = {name: m for name, m in model.named_modules() if isinstance(m, SparseConv3d)}
    if isinstance(config, ConvConfig):
        for module in convs.values():
            module.config = config
        return
    unknown = sorted(set(config) - set(convs))
    if unknown:
        raise ValueError(f"no SparseConv3d named {unknown}; the model has {sorted(convs)[:5]} ...")
    for name, layer_config in config.items():
        if not isinstance(layer_config, ConvConfig):
            raise TypeError(f"config for {name!r} must be a ConvConfig, got {type(layer_config).__name__}")
        convs[name].config = layer_config
