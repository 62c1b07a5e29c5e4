"""2:4-pruned convolutions on sparse tensor cores (CUDA sm80+, inference).

A pruned :class:`~pointsparse.nn.SparseConv3d` keeps two of every four weights along ``C_in``
(in ``channel_order``). Per offset k the conv is ``out[out_idx_k] += feats[in_idx_k] @ W_k``; the
sparse operand must be the weight, so each offset runs ``(W_k^T)[:, order] @ gathered[:, order]^T``
with ``W_k^T [C_out, C_in]`` compressed once by ``torch.sparse.to_sparse_semi_structured``
(cuSPARSELt or CUTLASS), the gathered rows permuted the same way. Offsets with few pairs, and layers
whose shapes the backend cannot take, run the same product dense. Forward only: a layer in training
mode, or with gradients enabled, runs its ordinary dataflow. The layer knows nothing of it:
:func:`enable_sparse_kernels` gives it an instance ``forward`` (:class:`SemiStructuredForward`).
"""

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import Tensor, nn

from . import functional as F
from .nn import SparseConv3d
from .nn.weight_mask import channel_order, weight_mask
from .tensor import SparseTensor, kernel_map

MIN_PAIRS = 1024  # below this many pairs an offset's product is too small to gain from sparsity


def backend_class():
    """The semi-structured tensor class ``to_sparse_semi_structured`` builds here (cuSPARSELt where
    PyTorch has it, else CUTLASS)."""
    from torch.sparse import semi_structured as ss

    if ss.SparseSemiStructuredTensor._FORCE_CUTLASS or not torch.backends.cusparselt.is_available():
        return ss.SparseSemiStructuredTensorCUTLASS
    return ss.SparseSemiStructuredTensorCUSPARSELT


def available(device: torch.device) -> bool:
    """Sparse tensor cores and PyTorch's semi-structured support on ``device``."""
    return (device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device) >= (8, 0)
            and hasattr(torch.sparse, "to_sparse_semi_structured"))


def ineligible_reason(module: nn.Module, dtype: torch.dtype, shape_constraints=None) -> Optional[str]:
    """Why ``module`` cannot run on sparse tensor cores in ``dtype`` (None when it can).
    ``shape_constraints``: the backend's ``_DTYPE_SHAPE_CONSTRAINTS`` (default: this machine's)."""
    if weight_mask(module) is None:
        return "not pruned"
    if module.transposed:
        return "transposed"
    constraints = backend_class()._DTYPE_SHAPE_CONSTRAINTS if shape_constraints is None else shape_constraints
    if dtype not in constraints:
        return f"dtype {dtype} not supported by the semi-structured backend"
    rows, cols = constraints[dtype].sparse_min_rows, constraints[dtype].sparse_min_cols
    if module.out_channels % rows or module.in_channels % cols:
        return f"C_out {module.out_channels} not a multiple of {rows} or C_in {module.in_channels} of {cols}"
    return None


@dataclass
class SemiStructuredWeights:
    """A pruned layer's per-offset weights ready for sparse tensor cores."""

    order: Tensor                 # int64 [C_in]: the channel order the 2:4 groups run along
    sparse: List[object]          # per offset: compressed (W_k^T)[:, order], [C_out, C_in]
    dense: Tensor                 # [K, C_in, C_out]: W[:, order] for offsets run dense
    min_pairs: int = MIN_PAIRS

    @staticmethod
    def of(module: nn.Module, dtype: torch.dtype, compress: Optional[Callable[[Tensor], object]] = None,
           min_pairs: int = MIN_PAIRS) -> "SemiStructuredWeights":
        """Compresses ``module``'s masked weight in ``dtype``; ``compress`` defaults to
        ``torch.sparse.to_sparse_semi_structured``."""
        compress = compress or torch.sparse.to_sparse_semi_structured
        order = channel_order(module)
        weight = module.weight.detach()[:, order].to(dtype)   # [K, C_in, C_out], masked (the parametrization)
        sparse = [compress(weight[k].t().contiguous()) for k in range(weight.shape[0])]
        return SemiStructuredWeights(order, sparse, weight, min_pairs)

    def run(self, feats: Tensor, kmap) -> Tensor:
        """``[N_out, C_out]`` from ``feats [N_in, C_in]`` over the pairs of ``kmap``."""
        feats = feats.to(self.dense.dtype)[:, self.order]                              # [N_in, C_in]
        out = feats.new_zeros((kmap.num_out, self.dense.shape[2]))
        ptr = kmap.offset_ptr.tolist()
        for k in range(len(ptr) - 1):
            lo, hi = ptr[k], ptr[k + 1]
            if hi == lo:
                continue
            gathered = feats.index_select(0, kmap.in_idx[lo:hi])                        # [n_k, C_in]
            if hi - lo >= self.min_pairs:
                product = torch.mm(self.sparse[k], gathered.t()).t()                     # [n_k, C_out]
            else:
                product = gathered @ self.dense[k]
            out.index_add_(0, kmap.out_idx[lo:hi], product)
        return out


def enable_sparse_kernels(model: nn.Module, dtype: torch.dtype = torch.float16, *,
                          compress: Optional[Callable[[Tensor], object]] = None,
                          min_pairs: int = MIN_PAIRS) -> List[tuple]:
    """Gives every eligible pruned SparseConv3d of ``model`` compressed weights for inference in
    ``dtype`` (run them under ``torch.autocast`` or on a ``dtype`` model, in eval mode without
    gradients). Returns ``(name, reason)`` for the pruned layers left dense. ``compress``: see
    :meth:`SemiStructuredWeights.of` (tests pass a dense stand-in on machines without a GPU)."""
    skipped = []
    for name, module in model.named_modules():
        if not isinstance(module, SparseConv3d) or weight_mask(module) is None:
            continue
        if compress is not None:  # a stand-in compression takes any shape the layer has
            reason = "transposed" if module.transposed else None
        else:
            reason = ineligible_reason(module, dtype)
        if reason is None and compress is None and not available(module.weight.device):
            reason = "no sparse tensor cores on " + str(module.weight.device)
        if reason is not None:
            skipped.append((name, reason))
            module.__dict__.pop("forward", None)
            continue
        module.forward = SemiStructuredForward(module, SemiStructuredWeights.of(module, dtype, compress, min_pairs))
    return skipped


def disable_sparse_kernels(model: nn.Module) -> None:
    for module in model.modules():
        if sparse_weights(module) is not None:
            del module.forward  # the class's forward again


def sparse_weights(module: nn.Module) -> Optional[SemiStructuredWeights]:
    """The compressed weights ``module`` runs on, None when it runs its ordinary forward."""
    forward = module.__dict__.get("forward")
    return forward.weights if isinstance(forward, SemiStructuredForward) else None


class SemiStructuredForward:
    """A pruned SparseConv3d's forward on its compressed weights, in eval mode without gradients
    (the class's forward otherwise): the result in the weights' dtype under autocast, else in the
    input's."""

    def __init__(self, module: nn.Module, weights: SemiStructuredWeights):
        self.module, self.weights = module, weights

    def __call__(self, x: SparseTensor, epilogue: Optional[F.Epilogue] = None) -> SparseTensor:
        module = self.module
        if module.training or torch.is_grad_enabled():
            return type(module).forward(module, x, epilogue)
        kmap = kernel_map(x, config=module.config, **module.geometry)
        feats = self.weights.run(x.feats, kmap)                                 # [N_out, C_out]
        if not torch.is_autocast_enabled(x.feats.device.type):
            feats = feats.to(x.feats.dtype)
        y = F.conv_output(x, kmap, feats, module.bias)
        return y if epilogue is None else y.with_feats(epilogue.apply(y.feats))
