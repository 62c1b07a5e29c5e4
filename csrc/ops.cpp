// Every schema of the pointsparse operator library, defined once. Backends register their kernels
// from their own files with TORCH_LIBRARY_IMPL; the dispatcher picks CPU or CUDA by the inputs.
//
// Coordinates are int32 [N, 4] as (batch, x, y, z), unique per tensor, batch in [0, 511] and
// x/y/z in [-131072, 131071] (the packable range, see csrc/common/coords.h).
#include <Python.h>
#include <torch/library.h>

#include "common/cpu_isa.h"

TORCH_LIBRARY(pointsparse, m) {
  // coords int32 [N, 4] -> keys int64 [N]; key order is lexicographic (b, x, y, z).
  m.def("pack_coords(Tensor coords) -> Tensor");
  // coords int32 [N, 4], factor 3 ints > 0 -> unique floor(c / factor) * factor, int32 [M, 4],
  // in order of first occurrence in coords. Two algorithms with identical results.
  //
  // checked (every kernel-map op): the caller vouches for the values of its coordinates or table
  // (the library's own, or checked before); dtypes and shapes are still checked, ranges, duplicates
  // and symmetry are not, so a CUDA build reads nothing back.
  m.def("downsample_coords_hash(Tensor coords, int[] factor, bool checked=False) -> Tensor");
  m.def("downsample_coords_sort(Tensor coords, int[] factor, bool checked=False) -> Tensor");
  // in_coords int32 [N_in, 4], out_coords int32 [N_out, 4], offsets int32 [K, 3] in coordinate
  // units -> neighbors int32 [N_out, K]: row of in_coords at out_coords[o] + offsets[k], -1 if none.
  // symmetric: submanifold map of an odd centred kernel (out_coords == in_coords).
  // Hash table of the rows of coords (packed key -> row), to hand to the ops below for every map
  // on the same coordinates: (keys int64, values int32), both [capacity]. Duplicates raise (on CUDA
  // unless checked).
  m.def("coords_hash_table(Tensor coords, bool checked=False) -> (Tensor keys, Tensor values)");
  // table_keys / table_values: coords_hash_table of in_coords, queried instead of a new table.
  m.def("build_kmap_hash(Tensor in_coords, Tensor out_coords, Tensor offsets, bool symmetric, "
        "bool checked=False, Tensor? table_keys=None, Tensor? table_values=None) -> Tensor");
  m.def("build_kmap_sort(Tensor in_coords, Tensor out_coords, Tensor offsets, bool symmetric, "
        "bool checked=False) -> Tensor");
  // Kernel map of a kernel that tiles its stride (sizes even or 1, offsets 0 .. k-1 in units of
  // tensor_stride, conv stride = kernel size, no dilation): out_coords are cell corners and each
  // input is found by one hash lookup of its corner -> neighbors int32 [N_out, K] equal to
  // build_kmap_* with the same offsets.
  // table_keys / table_values: coords_hash_table of out_coords.
  m.def("kmap_tiling(Tensor in_coords, Tensor out_coords, int[3] kernel_size, int[3] tensor_stride, "
        "bool checked=False, Tensor? table_keys=None, Tensor? table_values=None) -> Tensor");
  // Downsampling to the cells of a tiling kernel and its map in one pass: (out_coords int32
  // [N_out, 4] as downsample_coords_* gives them for factor kernel_size * tensor_stride,
  // neighbors int32 [N_out, K] as kmap_tiling gives them).
  m.def("downsample_tiling(Tensor coords, int[3] kernel_size, int[3] tensor_stride, bool checked=False) "
        "-> (Tensor, Tensor)");
  // neighbors int32 [N_out, K] -> per-offset pairs as CSR: offset_ptr int64 [K + 1] on the CPU,
  // in_idx int32 [P], out_idx int32 [P]; pairs of offset k sit in offset_ptr[k] .. offset_ptr[k+1]
  // with out_idx ascending.
  m.def("kmap_csr(Tensor neighbors) -> (Tensor offset_ptr, Tensor in_idx, Tensor out_idx)");
  // neighbors int32 [N_out, K] with entries in [-1, num_in) -> the transposed table int32
  // [num_in, K]: output row o at (i, k) where neighbors[o, k] == i, -1 elsewhere (the map of the
  // input gradient, and of a transposed conv).
  m.def("kmap_transpose(Tensor neighbors, SymInt num_in, bool checked=False) -> Tensor");
  // Output-row reordering of the implicit GEMM: neighbors int32 [N, K] -> (order int32 [splits, N],
  // tile_masks int32 [splits, ceil(N / tile_rows), ceil(K / 32)]). Split s covers offsets
  // [s * K / splits, (s + 1) * K / splits); when reorder its rows are stably sorted by their neighbour
  // mask in that range (as an integer, bit k weighing 2^k), descending, else kept in order; tile t's
  // mask is the OR of the masks of rows order[s, t * tile_rows ...].
  m.def("kmap_reorder(Tensor neighbors, int splits, int tile_rows, bool reorder) -> (Tensor order, Tensor tile_masks)");
  // neighbors int32 [N_out, K] -> bitmask int32 [N_out, ceil(K / 32)]; bit k % 32 of word k / 32
  // is set where neighbour k exists.
  m.def("kmap_bitmask(Tensor neighbors) -> Tensor");
  // Batch norm + ReLU over features x [N, C] (CPU, float32 / float64; see csrc/norm/cpu):
  // per-channel (mean, biased variance) [C]; y = relu?(x * scale + shift [+ residual [N, C]]) in one
  // pass; and the gradients (dx [N, C], dweight [C], dbias [C]) of
  // relu?((x - mean) * invstd * weight + bias) with batch statistics, the ReLU mask recomputed from x.
  m.def("channel_moments(Tensor x) -> (Tensor mean, Tensor var)");
  m.def("affine_relu(Tensor x, Tensor scale, Tensor shift, bool relu, Tensor? residual=None) -> Tensor");
  m.def("batch_norm_relu_backward(Tensor grad, Tensor x, Tensor mean, Tensor invstd, Tensor weight, "
        "Tensor bias, bool relu) -> (Tensor dx, Tensor dweight, Tensor dbias)");
  // Gather-GEMM-scatter convolution over per-offset pairs:
  // feats [N_in, C_in], weight [K, C_in, C_out], offset_ptr int64 [K + 1] on the CPU, in_idx and
  // out_idx int32 [P] -> out [num_out, C_out] = sum_k scatter(out_idx_k, feats[in_idx_k] @ weight[k]).
  // identity_offset: -1, or an offset whose pairs are i -> i for all rows (one GEMM, no gather).
  // Within one offset an output row occurs at most once (true of every kernel map, either way
  // round): the rows of one offset are written in parallel without atomics.
  m.def("conv_gather_scatter(Tensor feats, Tensor weight, Tensor offset_ptr, Tensor in_idx, "
        "Tensor out_idx, SymInt num_out, int identity_offset) -> Tensor");
  // Weight gradient of conv_gather_scatter: grad_out [num_out, C_out] -> [K, C_in, C_out].
  m.def("conv_weight_grad(Tensor feats, Tensor grad_out, Tensor offset_ptr, Tensor in_idx, "
        "Tensor out_idx, int identity_offset) -> Tensor");
  // The same convolution with offsets grouped into batched GEMMs (grouped gather-GEMM-scatter).
  // A plan is a flat int list of groups, each [size, batched (0/1), k_1 .. k_size]; every offset
  // with pairs except identity_offset appears exactly once; a batched group (at most 128 offsets)
  // is gathered into one zero-padded [G, max n_k, C_in] buffer and multiplied with one bmm, the
  // offsets of an unbatched group run one GEMM each. out_pos int32 [num_out, K]: the pair index of
  // output row o at offset k (-1 if none), so that a batched group is scattered one output row per
  // thread, without atomics; in_pos int32 [N_in, K] likewise by input row, for the input gradient.
  // The input gradient runs input_grad_plan with the roles swapped, the weight gradient
  // conv_grouped_weight_grad with weight_grad_plan (forward_plan is what this call computes).
  m.def("conv_grouped(Tensor feats, Tensor weight, Tensor offset_ptr, Tensor in_idx, Tensor out_idx, "
        "Tensor out_pos, Tensor in_pos, SymInt num_out, int identity_offset, int[] forward_plan, "
        "int[] input_grad_plan, int[] weight_grad_plan) -> Tensor");
  m.def("conv_grouped_weight_grad(Tensor feats, Tensor grad_out, Tensor offset_ptr, Tensor in_idx, "
        "Tensor out_idx, int identity_offset, int[] plan) -> Tensor");
  // Implicit GEMM, output-stationary: out [N_out, C_out], out[o] = sum_k feats[neighbors[o, k]] @
  // weight[k] over present neighbours. neighbors int32 [N_out, K]; order int32 [S, N_out]: per split
  // (contiguous offset ranges), a permutation of the output rows (sorted by neighbour mask when
  // reordered); tile_masks int32 [S, ceil(N_out / tile_rows), ceil(K / 32)]: per split and tile of
  // tile_rows consecutive rows of its order, the offsets (bits) the tile runs, only that split's.
  // Splits add up in order, tiles run in parallel, each output row is written by one tile: no
  // atomics. neighbors_t / order_t / tile_masks_t: the same for the transposed table [N_in, K]
  // (input gradient); offset_ptr / in_idx / out_idx: the map's pairs (weight gradient). symmetric:
  // the table is its own transpose with the offsets reversed (a submanifold map of a centred odd
  // kernel: input i's output at offset k is neighbors[i, K-1-k]), so the input gradient reads it and
  // its order and masks (passed again as the *_t) with the weight's offsets reversed.
  m.def("conv_implicit(Tensor feats, Tensor weight, Tensor neighbors, Tensor order, Tensor tile_masks, "
        "Tensor neighbors_t, Tensor order_t, Tensor tile_masks_t, Tensor offset_ptr, Tensor in_idx, "
        "Tensor out_idx, int tile_rows, bool symmetric=False) -> Tensor");
  // conv_implicit ending in relu?(out * scale + shift [+ residual]) per output channel (an eval-mode
  // batch norm, a residual block's addition, a ReLU), applied to the float sums before they are
  // rounded to the output's dtype (CUDA: in the tiled kernel's store). Inference: no autograd.
  m.def("conv_implicit_affine_relu(Tensor feats, Tensor weight, Tensor neighbors, Tensor order, Tensor tile_masks, "
        "int tile_rows, Tensor scale, Tensor shift, bool relu, Tensor? residual=None) -> Tensor");
  // Weight gradient of conv_implicit: [K, C_in, C_out], deterministic. CUDA reads the neighbour table
  // in the forward's order and tiles (split-K partial sums added in a fixed order: no pair lists);
  // the CPU runs the pairs (offset_ptr / in_idx / out_idx) through the fused kernels.
  m.def("conv_implicit_weight_grad(Tensor feats, Tensor grad_out, Tensor neighbors, Tensor order, "
        "Tensor tile_masks, int tile_rows, Tensor offset_ptr, Tensor in_idx, Tensor out_idx) -> Tensor");
  // The same convolution and weight gradient, fused: each register tile of pairs reads its input
  // rows, multiplies and adds into its output rows with no gathered copy and no GEMM call
  // (CPU only; results equal conv_gather_scatter / conv_weight_grad up to rounding).
  m.def("conv_fused(Tensor feats, Tensor weight, Tensor offset_ptr, Tensor in_idx, "
        "Tensor out_idx, SymInt num_out, int identity_offset) -> Tensor");
  // conv_fused ending in an eval-mode batch norm: relu?(conv * scale + shift [+ residual]) per
  // output channel, applied to each block of output rows as soon as it is done (float32 / float64).
  m.def("conv_fused_affine_relu(Tensor feats, Tensor weight, Tensor offset_ptr, Tensor in_idx, "
        "Tensor out_idx, SymInt num_out, int identity_offset, Tensor scale, Tensor shift, bool relu, "
        "Tensor? residual=None) -> Tensor");
  m.def("conv_fused_weight_grad(Tensor feats, Tensor grad_out, Tensor offset_ptr, Tensor in_idx, "
        "Tensor out_idx, int identity_offset) -> Tensor");
  // The instruction set the fused CPU kernels run with now: avx512, avx2 or baseline. No tensor
  // arguments, so no dispatch key: the kernel comes with the schema (a catch-all).
  m.def("fused_cpu_isa() -> str", [] { return pointsparse::isa_name(pointsparse::cpu_isa()); });
}

// The extension is imported as pointsparse._C only to run the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
