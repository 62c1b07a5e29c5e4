"""spconv's module plumbing: SparseModule, SparseSequential, the feature-only modules and the tables."""

from collections import OrderedDict
from typing import List

import torch
from torch import nn

from .core import SparseConvTensor


class SparseModule(nn.Module):
    """Marks modules that take a SparseConvTensor; others in a SparseSequential get features."""

    def __init__(self, name=None):
        super().__init__()
        self.name = name


class SparseSequential(SparseModule):
    """Runs its modules in order: SparseModules on the tensor, any other module on its features
    (``x.replace_feature(module(x.features))``), as spconv does. Takes modules positionally, as an
    OrderedDict, or by keyword."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for key, module in args[0].items():
                self.add_module(key, module)
        else:
            for idx, module in enumerate(args):
                self.add_module(str(idx), module)
        for name, module in kwargs.items():
            self.add_module(name, module)

    def __getitem__(self, idx):
        return list(self._modules.values())[idx]

    def __len__(self):
        return len(self._modules)

    def add(self, module, name=None):
        self.add_module(str(len(self._modules)) if name is None else name, module)

    def forward(self, input):
        for module in self._modules.values():
            if isinstance(module, SparseModule):
                input = module(input)
            elif isinstance(input, SparseConvTensor):
                if input.indices.shape[0] != 0:
                    input = input.replace_feature(module(input.features))
            else:
                input = module(input)
        return input


class _OnFeatures:
    def forward(self, input):
        if isinstance(input, SparseConvTensor):
            return input.replace_feature(super().forward(input.features))
        return super().forward(input)


class SparseBatchNorm(_OnFeatures, nn.BatchNorm1d):
    pass


class SparseReLU(_OnFeatures, nn.ReLU):
    pass


class SparseIdentity(nn.Identity):
    pass


class ToDense(SparseModule):
    """``x.dense()``: channels-first dense tensor."""

    def forward(self, x: SparseConvTensor):
        return x.dense()


class RemoveGrid(SparseModule):
    def forward(self, x: SparseConvTensor):
        x.grid = None
        return x


class Identity(nn.Module):
    def forward(self, input):
        return input


def assign_name_for_sparse_modules(module: nn.Module) -> None:
    for name, child in module.named_modules():
        if isinstance(child, SparseModule):
            child._sparse_unique_name = name


def _same_indices(tensors: List[SparseConvTensor], what: str) -> None:
    first = tensors[0]
    for other in tensors[1:]:
        if other.spatial_shape != first.spatial_shape or other.indices.shape != first.indices.shape:
            raise ValueError(f"you can't use {what} in two sptensor with different indices.")


class JoinTable(SparseModule):
    """Features of tensors at the same indices, concatenated along channels."""

    def forward(self, input: List[SparseConvTensor]) -> SparseConvTensor:
        _same_indices(input, "JoinTable")
        return input[0].replace_feature(torch.cat([t.features for t in input], 1))


class AddTable(SparseModule):
    """Features of tensors at the same indices, summed."""

    def forward(self, input: List[SparseConvTensor]) -> SparseConvTensor:
        _same_indices(input, "AddTable")
        return input[0].replace_feature(sum(t.features for t in input))


class ConcatTable(SparseModule):
    """Every module applied to the input: a list of their outputs."""

    def __init__(self, *modules):
        super().__init__()
        for index, module in enumerate(modules):
            self.add_module(str(index), module)

    def add(self, module, name=None):
        self.add_module(str(len(self._modules)) if name is None else name, module)
        return self

    def forward(self, input) -> list:
        return [module(input) for module in self._modules.values()]
