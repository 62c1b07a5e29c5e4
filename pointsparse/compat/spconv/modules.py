"""spconv's module plumbing: SparseModule, SparseSequential and the feature-only modules."""

from collections import OrderedDict

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
