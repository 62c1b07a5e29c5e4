"""Autocast rules for the convolution ops: cast, then run with autocast off.

``torch.library.register_autocast`` fixes the target dtype when it is registered; ours casts to the
dtype of the active ``torch.autocast`` region (float16 or bfloat16, as the user chose), the same way
torch's own GEMM-like ops do. Floating tensors on the autocast device are cast, float64 is left
alone (as autocast does), integer index tensors are untouched. The op then runs below the
autocast key, so nothing inside it is autocast again; its fake kernel sees the cast inputs and
promises their dtype, and autograd records the casts, so gradients flow back to float32 leaves.
"""

from typing import Tuple

import torch

_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


def _cast(args: Tuple, device_type: str, dtype: torch.dtype) -> Tuple:
    def cast(value):
        if (isinstance(value, torch.Tensor) and value.is_floating_point()
                and value.device.type == device_type and value.dtype is not torch.float64):
            return value.to(dtype)
        return value

    return tuple(cast(a) for a in args)


def register_autocast(qualname: str, lib: torch.library.Library) -> None:
    """Autocast kernels of ``qualname`` (``"pointsparse::name"``) for every autocast device type."""
    op = torch._library.utils.lookup_op(qualname)
    for device_type in _AUTOCAST_DEVICE_TYPES:
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        key = getattr(torch._C.DispatchKey, key_name)

        def autocast_kernel(*args, _device_type=device_type, _key=key):
            dtype = torch.get_autocast_dtype(_device_type)
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                return op(*_cast(args, _device_type, dtype))

        # py_impl serves the Python dispatcher (torch.compile's tracing), lib.impl the C++ one.
        if op.has_kernel_for_dispatch_key(key):
            op.py_kernels.pop(key)
        op.py_impl(key)(autocast_kernel)
        lib.impl(qualname.split("::")[1], lambda _keyset, *args, _k=autocast_kernel: _k(*args),
                 key_name, with_keyset=True)
