"""Weight-side 2:4 pruning of SparseConv3d: the library (:mod:`.masks`: masks, validation, model
surgery, storage; the mask itself is a parametrization, :mod:`pointsparse.nn.weight_mask`) and the
recipes that prune better than magnitude (:mod:`.recipes`)."""

from ..nn.weight_mask import (WeightMask, channel_order, check_2to4, mask_parametrization, original_weight,
                              set_weight_mask, weight_mask)
from .masks import (DEFAULT_EXCLUDE, METHODS, LayerPruning, compress_state_dict, decompress_state_dict,
                    kept_magnitude, kept_share, magnitude_mask, prune_layer, prune_model, search_channel_order)
from .recipes import (LayerSensitivity, LearnedMask, SrSte, annealed_temperature, attach_learned_masks,
                      choose_layers, distillation_loss, finalize_learned_masks, recalibrate_batch_norm,
                      sensitivity, set_mask_temperature, srste_finetune)

__all__ = ["DEFAULT_EXCLUDE", "METHODS", "LayerPruning", "LayerSensitivity", "LearnedMask", "SrSte", "WeightMask",
           "annealed_temperature", "attach_learned_masks", "channel_order", "check_2to4", "choose_layers",
           "compress_state_dict", "decompress_state_dict", "distillation_loss", "finalize_learned_masks",
           "kept_magnitude", "kept_share", "magnitude_mask", "mask_parametrization", "original_weight",
           "prune_layer", "prune_model", "recalibrate_batch_norm", "search_channel_order", "sensitivity",
           "set_mask_temperature", "set_weight_mask", "srste_finetune", "weight_mask"]
