"""Modules over SparseTensor; each owns its parameters and calls one functional op."""

from .conv import SparseConv3d
from .feature_ops import BatchNorm, GlobalAvgPool, GlobalMaxPool, LeakyReLU, ReLU

__all__ = ["BatchNorm", "GlobalAvgPool", "GlobalMaxPool", "LeakyReLU", "ReLU", "SparseConv3d"]
