"""``torchsparse.backends``: the flags TorchSparse code sets, accepted; pointsparse picks kernels by
``pointsparse.ConvConfig`` and never reads them."""

import torch

benchmark = False
allow_tf32 = True
allow_fp16 = True
hash_rsv_ratio = 2
device_capability = 0


def init() -> None:
    global device_capability, allow_tf32, allow_fp16
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        device_capability = major * 100 + minor * 10
        allow_tf32, allow_fp16 = device_capability >= 800, device_capability >= 750


init()
