"""The implicit-GEMM CUDA kernels run on the CPU: csrc/conv/cuda/implicit_kernels.cuh compiled for the
host against tests/emulation/ (each thread of a block a CPU thread, WMMA fragments and cp.async as host
twins that check the documented alignment and shape rules), launched split by split as on the device,
and compared with the CPU dataflow in float64. It tests the kernels' indexing, staging, masking and
barriers on machines without a GPU. The same cases run on the real kernels where an sm_80+ GPU is
present (the "cuda" backend, through the conv_implicit op); speed needs tools/gpu_check.sh."""

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pointsparse as ps
from pointsparse import ImplicitGemmConfig
from pointsparse.dataflows.implicit import reordering as reordering_of

from helpers import load_scan, random_tensor, with_batch

TENSOR_CORE_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8

REPO = Path(__file__).resolve().parents[1]
EMULATION = REPO / "tests" / "emulation"
KERNELS = REPO / "csrc" / "conv" / "cuda" / "implicit_kernels.cuh"
COMPILER = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")

SIMT, TENSOR_CORE, FMA_TILE = 0, 1, 2
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def build_emulated(library: Path, kernels_root: Path = REPO / "csrc", flags=("-O2", "-Wall", "-Werror")) -> Path:
    """The emulated kernels as a shared library; kernels_root holds conv/cuda/implicit_kernels.cuh."""
    if COMPILER is None:
        pytest.skip("no C++ compiler to build the emulated kernels")
    command = [COMPILER, "-std=c++20", *flags, "-pthread", "-shared", "-fPIC", f"-I{kernels_root}",
               f"-I{EMULATION}", str(EMULATION / "implicit_emulated.cpp"), "-o", str(library)]
    built = subprocess.run(command, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    return library


def entry_point(library: Path):
    """The built library: its ps_emulated_implicit and ps_emulated_weight_grad entries."""
    return ctypes.CDLL(str(library))


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    return entry_point(build_emulated(tmp_path_factory.mktemp("emulation") / "libimplicit_emulated.so"))


def run_emulated(entry, kernel, feats, weight, neighbors, reordering, epilogue=None, weight_transposed=False):
    """Output [N_out, C_out] of the emulated kernel: in the inputs' dtype from the tiled kernels, as on
    the device; float32 (float64 for float64 inputs) from the SIMT kernel's accumulators. ``epilogue``:
    (scale, shift, residual or None, relu) for the tiled kernels' store; ``weight_transposed``: hand
    the weight over stored [K, C_out, C_in] (as the input gradient's transposed view)."""
    K, C_in, C_out = weight.shape
    n_out = neighbors.shape[0]
    splits, tiles, words = reordering.tile_masks.shape
    feats = feats.contiguous()
    weight = weight.transpose(1, 2).contiguous() if weight_transposed else weight.contiguous()
    neighbors = neighbors.contiguous()
    order, masks = reordering.order.contiguous(), reordering.tile_masks.contiguous()
    acc_dtype = torch.float64 if feats.dtype == torch.float64 else torch.float32
    out_dtype = acc_dtype if kernel == SIMT else feats.dtype
    acc = torch.full((n_out, C_out), float("nan"), dtype=out_dtype)  # every entry must be written
    scale, shift, residual, relu = epilogue or (None, None, None, False)
    if scale is not None:
        scale, shift = scale.float().contiguous(), shift.float().contiguous()
        residual = None if residual is None else residual.to(feats.dtype).contiguous()
    address = lambda t: ptr(None if t is None else t.data_ptr())  # noqa: E731
    error = ctypes.create_string_buffer(512)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    status = entry.ps_emulated_implicit(
        ctypes.c_int(kernel), ctypes.c_int(DTYPES[feats.dtype]), ptr(feats.data_ptr()), i64(C_in),
        ptr(neighbors.data_ptr()), i64(K), ptr(order.data_ptr()), ptr(masks.data_ptr()), i64(words), i64(n_out),
        i64(reordering.tile_rows), i64(tiles), i64(splits), ptr(weight.data_ptr()), i64(C_out), ptr(acc.data_ptr()),
        address(scale), address(shift), address(residual), ctypes.c_int(relu), ctypes.c_int(weight_transposed), error,
        i64(len(error)))
    assert status == 0, error.value.decode()
    return acc


def run_on_cuda(kernel, feats, weight, kmap, reordering):
    """Output of the conv_implicit op on an sm_80+ GPU, in the features' dtype: tensor cores for half /
    bfloat16 and for float32 with TF32 allowed, FMA tiles for float32 without, SIMT for float64."""
    if kernel == SIMT and feats.dtype != torch.float64:
        pytest.skip("on sm_80+ CUDA runs only float64 on the SIMT kernel")
    cuda = [t.cuda() for t in (feats, weight, kmap.neighbors, reordering.order, reordering.tile_masks,
                               kmap.neighbors_t, kmap.offset_ptr, kmap.in_idx, kmap.out_idx)]
    feats, weight, neighbors, order, masks, neighbors_t, offset_ptr, in_idx, out_idx = cuda
    allowed = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = kernel == TENSOR_CORE
        out = ps.ops.conv_implicit(feats, weight, neighbors, order, masks, neighbors_t, order, masks,
                                   offset_ptr, in_idx, out_idx, reordering.tile_rows)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
    return out.cpu()


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.skipif(
    not TENSOR_CORE_GPU, reason="needs an sm_80+ GPU"))])
def run(request):
    """run(kernel, feats, weight, kmap, reordering) -> output [N_out, C_out] on the backend."""
    if request.param == "cuda":
        return run_on_cuda
    entry = request.getfixturevalue("emulated")
    return lambda kernel, feats, weight, kmap, reordering: run_emulated(entry, kernel, feats, weight,
                                                                        kmap.neighbors, reordering)


def layer(C_in, C_out, kernel_size=3, stride=1, num_points=300, seed=0):
    x = random_tensor(num_points=num_points, channels=C_in, span=9, seed=seed, dtype=torch.float64)
    kmap = ps.kernel_map(x, kernel_size, stride)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(kmap.num_offsets, C_in, C_out, generator=generator, dtype=torch.float64)
    return x.feats, weight, kmap


def reference(feats, weight, kmap, reordering):
    """The CPU implicit GEMM in float64 on the same (rounded) inputs."""
    return ps.ops.conv_implicit(feats.double(), weight.double(), kmap.neighbors, reordering.order,
                                reordering.tile_masks, kmap.neighbors_t, reordering.order, reordering.tile_masks,
                                kmap.offset_ptr, kmap.in_idx, kmap.out_idx, reordering.tile_rows)


def relative_error(result, expected):
    """Largest error over the largest magnitude, less what rounding the output to its dtype may add
    (the device returns half / bfloat16, the emulation its float32 accumulators)."""
    rounding = torch.finfo(result.dtype).eps if result.dtype in (torch.float16, torch.bfloat16) else 0.0
    return ((result.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item() - rounding


# The tiled kernels (tensor cores, and FMA tiles for exact float32) by input dtype, with their
# tolerances: products of 16-bit inputs are exact in float32, so half / bfloat16 differ from float64
# only by float32 sums; TF32 rounds its inputs to 10 mantissa bits; the FMA tiles are float32 throughout.
TILED = [(TENSOR_CORE, torch.float16, 1e-5), (TENSOR_CORE, torch.bfloat16, 1e-5), (TENSOR_CORE, torch.float32, 2e-3),
         (FMA_TILE, torch.float32, 1e-5)]
TILED_IDS = ["tensor cores half", "tensor cores bfloat16", "tensor cores tf32", "fma tiles float32"]


@pytest.mark.parametrize("kernel,dtype,tolerance", TILED, ids=TILED_IDS)
@pytest.mark.parametrize("tile_rows,reorder,splits", [(32, True, 1), (16, False, 2), (64, True, 3), (48, True, 2),
                                                      (128, False, 1)])
def test_tiled_kernels_match_the_cpu(run, kernel, dtype, tolerance, tile_rows, reorder, splits):
    # 13 -> 40 channels: offsets packed into slabs (4 of 13 channels per half slab, 2 per float slab)
    # with a partial MMA depth, and a partial second column block.
    feats, weight, kmap = layer(13, 40, seed=tile_rows + splits)
    feats, weight = feats.to(dtype), weight.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(tile_rows, reorder, splits))
    result = run(kernel, feats, weight, kmap, reordering)
    error = relative_error(result, reference(feats, weight, kmap, reordering))
    assert error < tolerance
    if kernel == TENSOR_CORE and dtype == torch.float32:
        assert error > 1e-7  # rounded to TF32, not exact float32


@pytest.mark.parametrize("kernel,dtype,tolerance", [TILED[0], TILED[2], TILED[3]], ids=[TILED_IDS[0], *TILED_IDS[2:]])
@pytest.mark.parametrize("C_in,C_out", [(0, 5), (1, 1), (3, 5), (4, 32), (16, 32), (32, 64), (40, 33), (72, 40), (96, 96)])
def test_tiled_kernels_on_channel_counts(run, kernel, dtype, tolerance, C_in, C_out):
    # Rows and weights staged by 16-byte copies where the channel count allows (C % 8 for half, % 4
    # for float) and element by element elsewhere; one or several slabs of input channels per offset,
    # or several offsets per slab up to C_in = slab / 2 (the 4-channel stem: 16 in a half slab); no
    # input channels at all (zeros out).
    feats, weight, kmap = layer(C_in, C_out, num_points=150, seed=C_in * 100 + C_out)
    feats, weight = feats.to(dtype), weight.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, 2))
    result = run(kernel, feats, weight, kmap, reordering)
    assert relative_error(result, reference(feats, weight, kmap, reordering)) < tolerance


@pytest.mark.parametrize("kernel", [SIMT, TENSOR_CORE, FMA_TILE])
@pytest.mark.parametrize("kernel_size,stride,splits", [(5, 1, 2), (2, 2, 1), (3, 2, 2)])
def test_kernels_on_multiword_masks_and_strided_maps(run, kernel, kernel_size, stride, splits):
    # k5: 125 offsets in 4 mask words; k2s2 / k3s2: downsampling maps with fewer output rows.
    feats, weight, kmap = layer(8, 24, kernel_size, stride, seed=kernel_size * 10 + stride)
    dtype = {SIMT: torch.float64, TENSOR_CORE: torch.bfloat16, FMA_TILE: torch.float32}[kernel]
    feats, weight = feats.to(dtype), weight.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(16, True, splits))
    result = run(kernel, feats, weight, kmap, reordering)
    assert relative_error(result, reference(feats, weight, kmap, reordering)) < 1e-5


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.float16, 1e-5)])
def test_simt_kernel_matches_the_cpu(run, dtype, tolerance):
    feats, weight, kmap = layer(7, 37, seed=3)
    feats, weight = feats.to(dtype), weight.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, 3))
    result = run(SIMT, feats, weight, kmap, reordering)
    assert relative_error(result, reference(feats, weight, kmap, reordering)) < tolerance


@pytest.mark.parametrize("kernel,dtype", [(TENSOR_CORE, torch.float16), (FMA_TILE, torch.float32)],
                         ids=["tensor cores half", "fma tiles float32"])
@pytest.mark.parametrize("kernel_size,stride,c_in,c_out,tile_rows,splits", [(2, 2, 32, 48, 32, 1),
                                                                           (3, 1, 16, 40, 64, 2)])
def test_tiled_kernels_on_a_real_scan(run, kernel, dtype, kernel_size, stride, c_in, c_out, tile_rows, splits):
    # Masks of a real street scan (07/000964 at 0.6 m: 4,327 voxels), not of random points.
    points = load_scan("semantickitti/sequences/07/velodyne/000964.bin")
    coords = with_batch(ps.sparse_quantize(points, 0.6))
    generator = torch.Generator().manual_seed(kernel_size)
    x = ps.SparseTensor(torch.randn(coords.shape[0], c_in, generator=generator, dtype=torch.float64), coords)
    kmap = ps.kernel_map(x, kernel_size, stride)
    weight = torch.randn(kmap.num_offsets, c_in, c_out, generator=generator, dtype=torch.float64)
    feats, weight = x.feats.to(dtype), weight.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(tile_rows, True, splits))
    result = run(kernel, feats, weight, kmap, reordering)
    assert relative_error(result, reference(feats, weight, kmap, reordering)) < 1e-5


@pytest.mark.parametrize("kernel,dtype,tolerance", TILED, ids=TILED_IDS)
@pytest.mark.parametrize("splits,with_residual", [(1, True), (2, False)])
def test_the_epilogue_in_the_tiled_store_matches_the_cpu(kernel, dtype, tolerance, splits, with_residual, emulated):
    # An eval-mode batch norm, a residual and a ReLU applied to the float sums before the output is
    # rounded (conv_implicit_affine_relu on CUDA), against the CPU op in float64.
    feats, weight, kmap = layer(13, 40, seed=21 + splits)
    feats, weight = feats.to(dtype), weight.to(dtype)
    generator = torch.Generator().manual_seed(splits)
    scale, shift = torch.rand(40, generator=generator, dtype=torch.float64) + 0.5, torch.randn(40, generator=generator,
                                                                                              dtype=torch.float64)
    residual = torch.randn(kmap.num_out, 40, generator=generator, dtype=torch.float64).to(dtype) if with_residual else None
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, splits))
    result = run_emulated(emulated, kernel, feats, weight, kmap.neighbors, reordering,
                          (scale.to(dtype), shift.to(dtype), residual, True))
    expected = ps.ops.conv_implicit_affine_relu(
        feats.double(), weight.double(), kmap.neighbors, reordering.order, reordering.tile_masks, reordering.tile_rows,
        scale.to(dtype).double(), shift.to(dtype).double(), True, None if residual is None else residual.double())
    assert (expected == 0).float().mean() > 0.2  # the ReLU clips some
    assert relative_error(result, expected) < tolerance


@pytest.mark.parametrize("kernel,dtype,tolerance", TILED, ids=TILED_IDS)
@pytest.mark.parametrize("C_in,C_out", [(3, 5), (13, 40), (40, 72)])
def test_tiled_kernels_read_a_transposed_weight_in_place(run_transposed, kernel, dtype, tolerance, C_in, C_out):
    # The input gradient runs the forward kernel with weight.transpose(1, 2): staged from the
    # transposed storage, not copied, with the same result.
    feats, weight, kmap = layer(C_in, C_out, num_points=150, seed=C_in + C_out)
    feats, weight = feats.to(dtype), weight.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, 2))
    result = run_transposed(kernel, feats, weight, kmap, reordering)
    assert relative_error(result, reference(feats, weight, kmap, reordering)) < tolerance


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.skipif(
    not TENSOR_CORE_GPU, reason="needs an sm_80+ GPU"))])
def run_transposed(request):
    """run(kernel, feats, weight, kmap, reordering) with the weight handed over as a transposed view."""
    if request.param == "cuda":
        def on_cuda(kernel, feats, weight, kmap, reordering):
            view = weight.transpose(1, 2).contiguous().transpose(1, 2)  # logical [K, C_in, C_out], stored transposed
            assert not view.is_contiguous()
            return run_on_cuda(kernel, feats, view, kmap, reordering)
        return on_cuda
    entry = request.getfixturevalue("emulated")
    return lambda kernel, feats, weight, kmap, reordering: run_emulated(entry, kernel, feats, weight, kmap.neighbors,
                                                                        reordering, weight_transposed=True)


def test_an_output_row_out_of_range_fails_the_kernel_assertion(emulated):
    feats, weight, kmap = layer(4, 8, seed=5)
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, 1))
    broken = type(reordering)(reordering.order.clone(), reordering.tile_masks, reordering.tile_rows)
    broken.order[0, 3] = kmap.neighbors.shape[0]  # one past the last output row
    for kernel in (SIMT, TENSOR_CORE, FMA_TILE):
        with pytest.raises(AssertionError, match="row_in_range"):
            run_emulated(emulated, kernel, feats.float(), weight.float(), kmap.neighbors, broken)


def test_the_emulation_catches_a_misaligned_wmma_pointer(emulated, tmp_path):
    # The emulation is only worth its tests if it rejects what the device rejects: shift the A tile
    # in shared memory by one element and the build of a kernel copy must fail its WMMA checks.
    source = KERNELS.read_text()
    needle = ": a + warp_row * 16 * kLdA + s * kDepth;"
    assert needle in source
    broken = tmp_path / "conv" / "cuda"
    broken.mkdir(parents=True)
    (broken / "implicit_kernels.cuh").write_text(
        source.replace(needle, needle.replace("a + warp_row", "a + 1 + warp_row"))
        .replace('#include "../conv_element.h"', f'#include "{REPO}/csrc/conv/conv_element.h"'))
    # the weight-gradient kernels include the (broken) copy beside them
    (broken / "implicit_weight_grad_kernels.cuh").write_text((KERNELS.parent / "implicit_weight_grad_kernels.cuh").read_text())
    entry = entry_point(build_emulated(tmp_path / "libbroken.so", tmp_path, flags=("-O1",)))
    feats, weight, kmap = layer(16, 16, seed=6)
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, 1))
    with pytest.raises(AssertionError, match="256-bit aligned"):
        run_emulated(entry, TENSOR_CORE, feats.half(), weight.half(), kmap.neighbors, reordering)



# The weight gradient (implicit_weight_grad_kernels.cuh): grad_weight[k] = feats[neighbours at k]^T grad_out
# straight from the table in the forward's row order, split-K over chunks of reorder tiles, partial
# sums added in a fixed order.

def run_weight_grad_emulated(entry, kernel, feats, grad_out, neighbors, reordering, tiles_per_chunk):
    """grad_weight [K, C_in, C_out] of the emulated kernels, in the inputs' dtype, each block summing
    tiles_per_chunk reorder tiles."""
    K = neighbors.shape[1]
    C_in, C_out, n_out = feats.shape[1], grad_out.shape[1], neighbors.shape[0]
    splits, tiles, words = reordering.tile_masks.shape
    feats, grad_out, neighbors = feats.contiguous(), grad_out.contiguous(), neighbors.contiguous()
    order, masks = reordering.order.contiguous(), reordering.tile_masks.contiguous()
    grad_weight = torch.full((K, C_in, C_out), float("nan"), dtype=feats.dtype)
    error = ctypes.create_string_buffer(512)
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    status = entry.ps_emulated_weight_grad(
        ctypes.c_int(kernel), ctypes.c_int(DTYPES[feats.dtype]), ptr(feats.data_ptr()), i64(C_in),
        ptr(grad_out.data_ptr()), i64(C_out), ptr(neighbors.data_ptr()), i64(K), ptr(order.data_ptr()),
        ptr(masks.data_ptr()), i64(splits), i64(words), i64(n_out), i64(reordering.tile_rows), i64(tiles),
        i64(tiles_per_chunk), ptr(grad_weight.data_ptr()), error, i64(len(error)))
    assert status == 0, error.value.decode()
    return grad_weight


def weight_grad_on_cuda(kernel, feats, grad_out, kmap, reordering):
    """The conv_implicit_weight_grad op on an sm_80+ GPU (its own chunking)."""
    if kernel == SIMT and feats.dtype != torch.float64:
        pytest.skip("on sm_80+ CUDA runs only float64 on the SIMT kernel")
    cuda = [t.cuda() for t in (feats, grad_out, kmap.neighbors, reordering.order, reordering.tile_masks)]
    allowed = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = kernel == TENSOR_CORE
        out = ps.ops.conv_implicit_weight_grad(*cuda, reordering.tile_rows, kmap.offset_ptr, kmap.in_idx.cuda(),
                                               kmap.out_idx.cuda())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
    return out.cpu()


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.skipif(
    not TENSOR_CORE_GPU, reason="needs an sm_80+ GPU"))])
def run_weight_grad(request):
    """run_weight_grad(kernel, feats, grad_out, kmap, reordering, tiles_per_chunk) -> [K, C_in, C_out]
    (tiles_per_chunk: the emulation's split-K; the device picks its own)."""
    if request.param == "cuda":
        return lambda kernel, feats, grad_out, kmap, reordering, tiles_per_chunk: weight_grad_on_cuda(
            kernel, feats, grad_out, kmap, reordering)
    entry = request.getfixturevalue("emulated")
    return lambda kernel, feats, grad_out, kmap, reordering, tiles_per_chunk: run_weight_grad_emulated(
        entry, kernel, feats, grad_out, kmap.neighbors, reordering, tiles_per_chunk)


def weight_grad_reference(feats, grad_out, kmap, reordering):
    """The CPU weight gradient (from the pairs) in float64 on the same (rounded) inputs."""
    return ps.ops.conv_implicit_weight_grad(feats.double(), grad_out.double(), kmap.neighbors, reordering.order,
                                            reordering.tile_masks, reordering.tile_rows, kmap.offset_ptr,
                                            kmap.in_idx, kmap.out_idx)


def weight_grad_case(C_in, C_out, kernel_size=3, stride=1, num_points=300, seed=0):
    feats, _, kmap = layer(C_in, C_out, kernel_size, stride, num_points, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(kmap.num_out, C_out, generator=generator, dtype=torch.float64)
    return feats, grad_out, kmap


WEIGHT_GRAD_KERNELS = [*TILED, (SIMT, torch.float64, 1e-12), (SIMT, torch.float32, 1e-5)]
WEIGHT_GRAD_IDS = [*TILED_IDS, "simt float64", "simt float32"]


@pytest.mark.parametrize("kernel,dtype,tolerance", WEIGHT_GRAD_KERNELS, ids=WEIGHT_GRAD_IDS)
@pytest.mark.parametrize("tile_rows,reorder,splits,tiles_per_chunk", [(16, False, 2, 3), (64, True, 3, 2),
                                                                      (48, True, 2, 100)])
def test_weight_grad_kernels_match_the_cpu(run_weight_grad, kernel, dtype, tolerance, tile_rows, reorder, splits,
                                           tiles_per_chunk):
    # 13 -> 40 channels: a partial tile of input channels and a partial second column block; tile
    # sizes that are not multiples of the 32-row slab; one chunk per tile up to one for all tiles.
    feats, grad_out, kmap = weight_grad_case(13, 40, seed=tile_rows + splits)
    feats, grad_out = feats.to(dtype), grad_out.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(tile_rows, reorder, splits))
    result = run_weight_grad(kernel, feats, grad_out, kmap, reordering, tiles_per_chunk)
    error = relative_error(result, weight_grad_reference(feats, grad_out, kmap, reordering))
    assert error < tolerance
    if kernel == TENSOR_CORE and dtype == torch.float32:
        assert error > 1e-7  # rounded to TF32, not exact float32


@pytest.mark.parametrize("kernel,dtype,tolerance", [TILED[0], TILED[2], TILED[3]], ids=[TILED_IDS[0], *TILED_IDS[2:]])
@pytest.mark.parametrize("C_in,C_out", [(1, 1), (3, 5), (32, 64), (40, 33), (72, 40)])
def test_weight_grad_kernels_on_channel_counts(run_weight_grad, kernel, dtype, tolerance, C_in, C_out):
    # Rows staged by 16-byte copies where the channel count allows and element by element elsewhere;
    # one or several tiles of input channels and blocks of output channels.
    feats, grad_out, kmap = weight_grad_case(C_in, C_out, num_points=150, seed=C_in * 100 + C_out)
    feats, grad_out = feats.to(dtype), grad_out.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, 2))
    result = run_weight_grad(kernel, feats, grad_out, kmap, reordering, 2)
    assert relative_error(result, weight_grad_reference(feats, grad_out, kmap, reordering)) < tolerance


@pytest.mark.parametrize("kernel", [SIMT, TENSOR_CORE, FMA_TILE])
@pytest.mark.parametrize("kernel_size,stride,splits", [(5, 1, 2), (2, 2, 1), (3, 2, 2)])
def test_weight_grad_kernels_on_multiword_masks_and_strided_maps(run_weight_grad, kernel, kernel_size, stride,
                                                                 splits):
    # k5: 125 offsets in 4 mask words (offsets past 32 find their split and word); strided maps.
    feats, grad_out, kmap = weight_grad_case(8, 24, kernel_size, stride, seed=kernel_size * 10 + stride)
    dtype = {SIMT: torch.float64, TENSOR_CORE: torch.bfloat16, FMA_TILE: torch.float32}[kernel]
    feats, grad_out = feats.to(dtype), grad_out.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(16, True, splits))
    result = run_weight_grad(kernel, feats, grad_out, kmap, reordering, 3)
    assert relative_error(result, weight_grad_reference(feats, grad_out, kmap, reordering)) < 1e-5


@pytest.mark.parametrize("kernel,dtype", [(TENSOR_CORE, torch.float16), (FMA_TILE, torch.float32)],
                         ids=["tensor cores half", "fma tiles float32"])
def test_weight_grad_kernels_on_a_real_scan(run_weight_grad, kernel, dtype):
    points = load_scan("semantickitti/sequences/07/velodyne/000964.bin")
    coords = with_batch(ps.sparse_quantize(points, 0.8))
    generator = torch.Generator().manual_seed(7)
    x = ps.SparseTensor(torch.randn(coords.shape[0], 16, generator=generator, dtype=torch.float64), coords)
    kmap = ps.kernel_map(x, 3, 1)
    grad_out = torch.randn(kmap.num_out, 32, generator=generator, dtype=torch.float64)
    feats, grad_out = x.feats.to(dtype), grad_out.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, 1))
    result = run_weight_grad(kernel, feats, grad_out, kmap, reordering, 8)
    assert relative_error(result, weight_grad_reference(feats, grad_out, kmap, reordering)) < 1e-5


def test_weight_grad_is_bitwise_deterministic_and_chunking_changes_only_rounding(emulated):
    feats, grad_out, kmap = weight_grad_case(24, 40, seed=11)
    feats, grad_out = feats.half(), grad_out.half()
    reordering = reordering_of(kmap, ImplicitGemmConfig(16, True, 2))
    once = run_weight_grad_emulated(emulated, TENSOR_CORE, feats, grad_out, kmap.neighbors, reordering, 2)
    again = run_weight_grad_emulated(emulated, TENSOR_CORE, feats, grad_out, kmap.neighbors, reordering, 2)
    assert torch.equal(once, again)
    one_chunk = run_weight_grad_emulated(emulated, TENSOR_CORE, feats, grad_out, kmap.neighbors, reordering, 10**6)
    assert torch.allclose(once.float(), one_chunk.float(), rtol=2e-3, atol=2e-3)


def test_weight_grad_skips_rows_without_the_offset(emulated):
    # A row with no neighbour at k must not reach grad_weight[k], even with a non-finite output
    # gradient (the pairs never pair it): its gathered rows are zero on both sides.
    feats, grad_out, kmap = weight_grad_case(8, 8, seed=12)
    lonely = int((kmap.neighbors < 0).sum(1).argmax())
    grad_out[lonely] = float("inf")
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, 1))
    absent = kmap.neighbors[lonely] < 0
    for kernel, dtype in ((SIMT, torch.float64), (FMA_TILE, torch.float32), (TENSOR_CORE, torch.float16)):
        result = run_weight_grad_emulated(emulated, kernel, feats.to(dtype), grad_out.to(dtype), kmap.neighbors,
                                          reordering, 1)
        assert torch.isfinite(result[absent]).all()


def test_a_weight_grad_row_out_of_range_fails_the_kernel_assertion(emulated):
    feats, grad_out, kmap = weight_grad_case(4, 8, seed=5)
    reordering = reordering_of(kmap, ImplicitGemmConfig(32, True, 1))
    broken = type(reordering)(reordering.order.clone(), reordering.tile_masks, reordering.tile_rows)
    broken.order[0, 3] = kmap.neighbors.shape[0]
    for kernel in (SIMT, TENSOR_CORE, FMA_TILE):
        with pytest.raises(AssertionError, match="row_in_range"):
            run_weight_grad_emulated(emulated, kernel, feats.float(), grad_out.float(), kmap.neighbors, broken, 1)

# Run by test_the_kernels_have_no_data_races_under_thread_sanitizer in a process with TSan preloaded.
RACE_CASES = """
import sys, ctypes, torch
sys.path.insert(0, {tests!r})
from pointsparse import ImplicitGemmConfig
from pointsparse.dataflows.implicit import reordering as reordering_of
import test_implicit_kernels as t
entry = t.entry_point({library!r})
for kernel, dtype, c_in, c_out, tile, splits in [(t.TENSOR_CORE, torch.float16, 13, 40, 32, 2),
                                                (t.TENSOR_CORE, torch.float32, 32, 64, 64, 2),
                                                (t.FMA_TILE, torch.float32, 40, 33, 48, 3),
                                                (t.TENSOR_CORE, torch.bfloat16, 72, 40, 16, 1),
                                                (t.SIMT, torch.float64, 7, 37, 32, 3)]:
    feats, weight, kmap = t.layer(c_in, c_out, num_points=120, seed=c_in)
    feats, weight = feats.to(dtype), weight.to(dtype)
    reordering = reordering_of(kmap, ImplicitGemmConfig(tile, True, splits))
    t.run_emulated(entry, kernel, feats, weight, kmap.neighbors, reordering)
    if kernel != t.SIMT:
        t.run_emulated(entry, kernel, feats, weight, kmap.neighbors, reordering, weight_transposed=True)
    grad_out = torch.randn(kmap.num_out, c_out, dtype=torch.float64).to(dtype)
    t.run_weight_grad_emulated(entry, kernel, feats, grad_out, kmap.neighbors, reordering, 2)
print("ran")
"""


def test_the_kernels_have_no_data_races_under_thread_sanitizer(tmp_path):
    # The barriers and cp.async waits checked by happens-before, not by timing: the emulated kernels
    # built with -fsanitize=thread (a missing barrier is reported at once; checked by hand) run a
    # case of each kernel in a process with the TSan runtime preloaded.
    runtime = subprocess.run([COMPILER or "c++", "-print-file-name=libtsan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(runtime) or not os.path.exists(runtime):
        pytest.skip("no ThreadSanitizer runtime")
    library = build_emulated(tmp_path / "libimplicit_tsan.so", flags=("-O1", "-g", "-fsanitize=thread"))
    script = RACE_CASES.format(tests=str(REPO / "tests"), library=str(library))
    env = dict(os.environ, LD_PRELOAD=runtime, TSAN_OPTIONS="report_signal_unsafe=0 halt_on_error=0")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    if "FATAL: ThreadSanitizer" in result.stderr:  # the runtime cannot start (e.g. this kernel's ASLR)
        pytest.skip(result.stderr.strip().splitlines()[0])
    assert result.returncode == 0 and "ran" in result.stdout, result.stderr[-6000:]
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-6000:]
