"""Sparse max pooling over a kernel map: each output row takes, per channel, the largest feature of
the input rows the map gives it (MinkowskiEngine's ``MinkowskiMaxPooling``, spconv's
``SparseMaxPool``); :func:`pointsparse.functional.max_pool3d` and
:class:`pointsparse.nn.SparseMaxPool3d` run it.

The map is a conv's (:func:`pointsparse.kernel_map`, cached with the tensor's others): every output
rule, padding and dilation of :func:`pointsparse.functional.conv3d` applies. The maximum is found
offset by offset on the neighbour table (torch ops, any device); the result is a gather of the
winning rows, so the gradient of an output goes to its arg-max input row alone (the first offset
holding the maximum when several tie). ``initial`` is the value an output starts from: ``-inf``
gives the maximum of the inputs; spconv starts from 0 (``max(0, inputs)``).
"""

import torch
from torch import Tensor


def max_over_neighbors(feats: Tensor, neighbors: Tensor, initial: float = float("-inf")) -> Tensor:
    """``[N_out, C]``: per output row o and channel c, ``max(initial, feats[neighbors[o, k], c])``
    over the offsets k with a neighbour (``neighbors`` int32 ``[N_out, K]``, -1 where none).
    Differentiable in ``feats`` (the gradient goes to the arg-max row; none where ``initial`` won)."""
    n_out, channels = neighbors.shape[0], feats.shape[1]
    with torch.no_grad():
        best = feats.new_full((n_out, channels), initial)                                  # [N_out, C]
        winner = torch.full((n_out, channels), -1, dtype=torch.long, device=feats.device)  # input row
        for k in range(neighbors.shape[1]):
            rows = neighbors[:, k].long()                                                 # [N_out]
            present = rows >= 0
            candidate = feats[rows.clamp_min(0)]                                         # [N_out, C]
            better = (candidate > best) & present[:, None]
            best = torch.where(better, candidate, best)
            winner = torch.where(better, rows[:, None], winner)
    won = winner >= 0
    picked = feats.gather(0, winner.clamp_min(0))                                         # [N_out, C]
    return torch.where(won, picked, best)
