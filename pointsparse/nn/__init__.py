"""Modules over SparseTensor; each owns its parameters and calls one functional op."""

from .conv import SparseConv3d, set_conv_configs
from .conv_norm import conv_norm
from .feature_ops import BatchNorm, BatchNormReLU, GlobalAvgPool, GlobalMaxPool, LeakyReLU, Linear, ReLU
from .pooling import SparseMaxPool3d

__all__ = ["BatchNorm", "BatchNormReLU", "GlobalAvgPool", "GlobalMaxPool", "LeakyReLU", "Linear", "ReLU", "SparseConv3d",
           "SparseMaxPool3d",
           "conv_norm", "set_conv_configs"]
