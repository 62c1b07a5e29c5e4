"""Autocast rules for the convolution ops: cast, then run with autocast off (the C++ kernels are
``csrc/conv/conv_autocast.cpp``; these Python twins serve torch.compile's tracing).

``torch.library.register_autocast`` fixes the target dtype when it is registered; ours casts to the
dtype of the active ``torch.autocast`` region (float16 or bfloat16, as the user chose), the same way
torch's own GEMM-like ops do. Floating tensors on the autocast device are cast, float64 is left
alone (as autocast does), integer index tensors are untouched, and so are an epilogue's scale and
shift, which its kernel reads in float32. The op then runs below the
autocast key, so nothing inside it is autocast again; its fake kernel sees the cast inputs and
promises their dtype, and autograd records the casts, so gradients flow back to float32 leaves.
"""

from typing import FrozenSet, Tuple

import torch

_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


# Operands an epilogue reads in float32 whatever their dtype (a batch norm's scale and shift): not cast.
KEPT_AS_GIVEN = ("scale", "shift")


def _cast(args: Tuple, device_type: str, dtype: torch.dtype, kept: FrozenSet[int]) -> Tuple:
    def cast(value):
        if (isinstance(value, torch.Tensor) and value.is_floating_point()
                and value.device.type == device_type and value.dtype is not torch.float64):
            return value.to(dtype)
        return value

    return tuple(a if i in kept else cast(a) for i, a in enumerate(args))


def register_autocast(qualname: str) -> None:
    """Python autocast kernels of ``qualname`` (``"pointsparse::name"``) for every autocast device
    type, for torch.compile's Python dispatcher. The C++ dispatcher runs the C++ kernels of
    ``csrc/conv/conv_autocast.cpp`` (the same rule, casting through ATen's per-region weight cache)."""
    op = torch._library.utils.lookup_op(qualname)
    kept = frozenset(i for i, argument in enumerate(op._schema.arguments) if argument.name in KEPT_AS_GIVEN)
    for device_type in _AUTOCAST_DEVICE_TYPES:
        key = getattr(torch._C.DispatchKey, "Autocast" + torch._C._dispatch_key_for_device(device_type))

        def autocast_kernel(*args, _device_type=device_type, _key=key):
            dtype = torch.get_autocast_dtype(_device_type)
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                return op(*_cast(args, _device_type, dtype, kept))

        op.py_kernels.pop(key, None)  # a module reloaded in the process registers again
        op.py_impl(key)(autocast_kernel)
