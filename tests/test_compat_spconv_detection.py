"""What detection codebases need of spconv, on pointsparse.compat.spconv: OpenPCDet's helpers and
sparse backbones unmodified (tests/fixtures/openpcdet), the module surface after install(), 1-/2-D
convs, max pooling, the 1x1 shortcut and the voxel generator against spconv itself (its CPU
package, where it installs)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pointsparse.compat.spconv as spconv
from pointsparse.voxel_generator import voxelize
from pointsparse.extras import extra_unavailable_reason

from helpers import SHARED_DATA, load_scan, require_extra

HERE = Path(__file__).resolve().parent
SCAN = "semantickitti/sequences/00/velodyne/000000.bin"


def real_spconv():
    """spconv.pytorch itself, set up for its CPU package (single thread: its CPU scatter-add races)."""
    require_extra("spconv")
    import spconv.pytorch as real
    import spconv.pytorch.ops

    spconv.pytorch.ops.get_current_stream = lambda: 0  # its CPU backward asks for a CUDA stream otherwise
    return real


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=HERE)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_openpcdets_backbones_run_unmodified_and_equal_spconvs(tmp_path):
    """VoxelBackBone8x, VoxelResBackBone8x, VoxelNeXt's (3-D and 2-D convs, indices edited in place)
    and PillarRes18BackBone8x (2-D), each on the same real scan voxelised by the engine's own voxel
    generator, forward and backward in float64, with the same weights."""
    scan = SHARED_DATA / SCAN
    if not scan.exists():
        pytest.skip(f"real scan {scan} not present")
    ours, theirs = tmp_path / "pointsparse.pt", tmp_path / "spconv.pt"
    script = str(HERE / "openpcdet_backbones.py")
    run = subprocess.run([sys.executable, script, "--engine", "pointsparse", "--scan", str(scan), "--out", str(ours)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    mine = torch.load(ours, weights_only=False)
    assert mine["spconv_is"] == "pointsparse.compat.spconv"  # OpenPCDet's `spconv` is this layer
    for name, record in mine.items():
        if isinstance(record, dict):
            assert record["feats grad"].abs().sum() > 0 and all(g.isfinite().all() for g in record["weight grads"].values())
    if extra_unavailable_reason("spconv", "this comparison") is not None:
        pytest.skip("spconv's CPU package is not installed: ran on pointsparse only")
    run = subprocess.run([sys.executable, script, "--engine", "spconv", "--scan", str(scan), "--weights", str(ours),
                          "--out", str(theirs)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    reference = torch.load(theirs, weights_only=False)
    assert reference["spconv_is"] == "spconv.pytorch"
    for name in ("VoxelBackBone8x", "VoxelResBackBone8x", "VoxelResBackBone8xVoxelNeXt", "PillarRes18BackBone8x"):
        got, want = mine[name], reference[name]
        assert set(got) == set(want)
        for key, value in got.items():
            if key == "state_dict":
                continue
            if isinstance(value, tuple):  # (features, indices), rows sorted by index
                assert torch.equal(value[1], want[key][1]), f"{name} {key}: indices differ"
                torch.testing.assert_close(value[0], want[key][0], rtol=1e-9, atol=1e-9, msg=f"{name} {key}")
            elif isinstance(value, dict):  # weight gradients
                assert set(value) == set(want[key])
                for param, grad in value.items():
                    torch.testing.assert_close(grad, want[key][param], rtol=1e-7, atol=1e-8, msg=f"{name} {param}")
            else:
                torch.testing.assert_close(value, want[key], rtol=1e-9, atol=1e-9, msg=f"{name} {key}")


def test_the_module_surface_detection_code_imports():
    out = run_python("""
import pointsparse.compat.spconv
pointsparse.compat.spconv.install()
import spconv
assert float(spconv.__version__[2:]) >= 2.2 and spconv.SPCONV_VERSION_NUMBERS == [2, 3, 8]
spconv.constants.SPCONV_USE_DIRECT_TABLE = False
import spconv.pytorch as sp
from spconv.pytorch import (SparseConv2d, SparseConv3d, SparseConv4d, SparseConvTranspose2d, SparseConvTranspose3d,
                            SparseInverseConv2d, SparseInverseConv3d, SparseModule, SubMConv2d, SubMConv3d, SubMConv4d)
from spconv.pytorch.conv import SparseConvolution
from spconv.pytorch.pool import SparseMaxPool3d
from spconv.pytorch.utils import PointToVoxel, gather_features_by_pc_voxel_id
from spconv.utils import Point2VoxelCPU3d
from spconv.core import ConvAlgo
from spconv.pytorch.core import SparseConvTensor
import cumm.tensorview as tv
SparseModule._version = 2  # mmdet3d's registration does this
assert issubclass(SubMConv2d, sp.conv.SparseConvolution) and sp.SparseMaxPool2d(2).stride == (2, 2)
try:
    from spconv.utils import VoxelGeneratorV2   # OpenPCDet tries spconv 1.x's name first
except ImportError as error:
    print("no v1:", error)
try:
    SubMConv4d(4, 4, 3)
except NotImplementedError as error:
    print("4d:", error)
try:
    sp.SparseAvgPool3d
except AttributeError as error:
    print("avg:", error)
print("ok")
""")
    assert out.splitlines()[-1] == "ok"
    assert "cannot import name 'VoxelGeneratorV2'" in out
    assert "4-D is not provided" in out
    assert "does not provide spconv's 'SparseAvgPool3d': average pooling" in out


def random_tensor(sp, ndim, seed=0, channels=3, span=9, batch=2, points=150, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    indices = torch.unique(torch.cat([torch.randint(0, batch, (points, 1), generator=gen),
                                      torch.randint(0, span, (points, ndim), generator=gen)], 1), dim=0).int()
    feats = torch.randn(indices.shape[0], channels, generator=gen, dtype=dtype)
    return sp.SparseConvTensor(feats, indices, [span] * ndim, batch)


def run_net(sp, ndim, make, weights=None, seed=0):
    """Features, indices (rows sorted), spatial shape, input gradient and weights of ``make(sp)``."""
    net = make(sp).double()
    if weights is not None:
        net.load_state_dict(weights)
    x = random_tensor(sp, ndim, seed)
    feats = x.features.clone().requires_grad_()
    y = net(x.replace_feature(feats))
    order = torch.from_numpy(np.lexsort(y.indices.numpy().T[::-1]))  # the engines order rows differently
    probe = torch.randn(y.features.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (y.features[order] * probe).sum().backward()
    return y.features.detach()[order], y.indices[order], list(y.spatial_shape), feats.grad, net.state_dict()


NETS = {  # name: (ndim, builder over a spconv-like module)
    "2-D subm, strided, inverse": (2, lambda sp: sp.SparseSequential(
        sp.SubMConv2d(3, 8, 3, padding=1, indice_key="s1"), torch.nn.ReLU(),
        sp.SparseConv2d(8, 8, 3, 2, 1, indice_key="down"), sp.SubMConv2d(8, 8, 3, indice_key="s2"),
        sp.SparseInverseConv2d(8, 4, 3, indice_key="down"))),
    "2-D transposed, dilation, anisotropic": (2, lambda sp: sp.SparseSequential(
        sp.SparseConv2d(3, 6, (3, 2), (2, 1), (1, 0), dilation=(1, 2)), sp.SparseConvTranspose2d(6, 4, 2, 2))),
    "1x1 convs (spconv's weight view)": (3, lambda sp: sp.SparseSequential(
        sp.SubMConv3d(3, 5, 1, bias=False), sp.SparseConv3d(5, 4, 1))),
    "1-D": (1, lambda sp: sp.SparseSequential(sp.SubMConv1d(3, 4, 3), sp.SparseConv1d(4, 4, 3, 2, 1))),
    "max pooling 3-D": (3, lambda sp: sp.SparseSequential(
        sp.SubMConv3d(3, 6, 3, indice_key="s1"), sp.SparseMaxPool3d(2, indice_key="pool"),
        sp.SparseMaxPool3d(3, 2, 1), sp.SparseConv3d(6, 4, 2))),
    "max pooling 2-D into an inverse conv": (2, lambda sp: sp.SparseSequential(
        sp.SubMConv2d(3, 6, 3), sp.SparseMaxPool2d(3, 2, 1, indice_key="pool"),
        sp.SparseInverseConv2d(6, 4, 3, indice_key="pool"))),
}


@pytest.mark.parametrize("name", list(NETS))
def test_layers_equal_spconvs_forward_and_backward(name, one_thread):
    real = real_spconv()
    ndim, make = NETS[name]
    torch.manual_seed(0)
    ours = run_net(spconv, ndim, make)
    theirs = run_net(real, ndim, make, weights=ours[4])  # spconv's KRSC state dict is ours, unchanged
    assert torch.equal(ours[1], theirs[1]) and ours[2] == theirs[2]
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours[3], theirs[3], rtol=1e-10, atol=1e-10)


class _TwoBranches(torch.nn.Module):
    """A conv and a max pool down from one level, the pool inverted (two coarse coordinate sets at
    one stride), with spconv's record_voxel_count buffers."""

    def __init__(self, sp):
        super().__init__()
        self.subm = sp.SubMConv3d(3, 6, 3, indice_key="s1")
        self.down = sp.SparseConv3d(6, 6, 3, 2, 1, indice_key="down", record_voxel_count=True)
        self.pool = sp.SparseMaxPool3d(2, indice_key="pool", record_voxel_count=True)
        self.up = sp.SparseInverseConv3d(6, 4, 2, indice_key="pool")

    def forward(self, x):
        x = self.subm(x)
        down = self.down(x)
        up = self.up(self.pool(x))
        return up.replace_feature(up.features + down.features.sum() * 0.01)


NETS["a conv and an inverted pool from one level"] = (3, _TwoBranches)


def test_max_pooling_starts_from_zero_as_spconvs_does():
    x = spconv.SparseConvTensor(torch.tensor([[-1.0, 2.0], [-3.0, 2.5], [-0.5, -4.0]]),
                                torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]], dtype=torch.int32), [4] * 3, 1)
    y = spconv.SparseMaxPool3d(2)(x)
    assert y.features.tolist() == [[0.0, 2.5]] and y.spatial_shape == [2, 2, 2]


@pytest.mark.parametrize("grid,max_points,max_voxels", [
    ((0.05, 0.05, 0.1, 0, -40, -3, 70.4, 40, 1), 5, 16000),       # KITTI voxels
    ((0.16, 0.16, 4, 0, -39.68, -3, 69.12, 39.68, 1), 32, 16000),  # KITTI pillars
    ((0.3, 0.3, 0.3, -10, -10, -2, 10, 10, 1), 3, 500),           # capped: voxels and points dropped
])
def test_the_voxel_generator_equals_spconvs_on_a_real_scan(grid, max_points, max_voxels):
    require_extra("spconv")
    from spconv.utils import Point2VoxelCPU3d as Theirs
    import cumm.tensorview as tv

    points = np.c_[load_scan(SCAN), np.linspace(0, 1, len(load_scan(SCAN)), dtype=np.float32)]
    points[:7, :3] = [[0, -40, -3], [70.4, 40, 1], [70.39, 39.99, 0.99], [-0.01, 0, 0],  # the range's edges
                      [10, 10, 1], [-10, -10, -2], [9.99, 0, 0]]
    kwargs = dict(vsize_xyz=list(grid[:3]), coors_range_xyz=list(grid[3:]), num_point_features=4,
                  max_num_voxels=max_voxels, max_num_points_per_voxel=max_points)
    want = [t.numpy() for t in Theirs(**kwargs).point_to_voxel(tv.from_numpy(points))]
    ours = spconv.utils.Point2VoxelCPU3d(**kwargs)
    got = [t.numpy() for t in ours.point_to_voxel(points)]
    assert ours.grid_size == Theirs(**kwargs).grid_size
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and np.array_equal(g, w)


def test_half_precision_points_voxelise_as_their_float32_values():
    points = torch.from_numpy(load_scan(SCAN)[::20].copy()).half()
    grid = ([0.05, 0.05, 0.1], [0, -40, -3, 70.4, 40, 1])
    half, single = voxelize(points, *grid, 5, 20000), voxelize(points.float(), *grid, 5, 20000)
    assert torch.equal(half.indices, single.indices) and torch.equal(half.num_points, single.num_points)
    assert torch.equal(half.voxels.float(), single.voxels)


def test_the_voxel_generators_bookkeeping():
    points = torch.tensor([[0.05, 0.05, 0.05, 1.0], [0.15, 0.05, 0.05, 2.0], [0.06, 0.04, 0.01, 3.0],
                           [0.07, 0.07, 0.07, 4.0], [5.0, 5.0, 5.0, 5.0], [0.25, 0.05, 0.05, 6.0]])
    to_voxels = spconv.utils.PointToVoxel([0.1] * 3, [0, 0, 0, 1, 1, 1], 4, max_num_voxels=2,
                                          max_num_points_per_voxel=2)
    voxels, indices, counts, point_voxel = to_voxels.generate_voxel_with_id(points)
    assert indices.tolist() == [[0, 0, 0], [0, 0, 1]] and counts.tolist() == [2, 1]
    assert point_voxel.tolist() == [0, 1, 0, 0, -1, -1]  # the third point of voxel 0 is dropped, not its id
    assert voxels[0, :, 3].tolist() == [1.0, 3.0] and voxels[1, 1].abs().sum() == 0
    mean = to_voxels(points, empty_mean=True)[0]
    assert mean[1, 1].tolist() == points[1].tolist()  # an empty slot holds the voxel's own mean
    gathered = spconv.utils.gather_features_by_pc_voxel_id(torch.tensor([[10.0], [20.0]]), point_voxel, -1)
    assert gathered.flatten().tolist() == [10, 20, 10, 10, -1, -1]
    with pytest.raises(ValueError, match="num features"):
        to_voxels(points[:, :3])


def test_tables_global_pools_and_dense_in_two_dimensions():
    x = random_tensor(spconv, 2, channels=2, dtype=torch.float32)
    assert spconv.JoinTable()([x, x]).features.shape[1] == 4
    torch.testing.assert_close(spconv.AddTable()([x, x]).features, 2 * x.features)
    outs = spconv.ConcatTable(spconv.SubMConv2d(2, 3, 3), spconv.Identity())(x)
    assert outs[0].features.shape[1] == 3 and outs[1] is x
    dense = x.dense()
    assert dense.shape == (2, 2, 9, 9)
    per_batch = [x.features[x.indices[:, 0] == b] for b in range(2)]
    torch.testing.assert_close(spconv.SparseGlobalMaxPool()(x), torch.stack([f.max(0).values for f in per_batch]))
    torch.testing.assert_close(spconv.SparseGlobalAvgPool()(x), torch.stack([f.mean(0) for f in per_batch]))
    back = spconv.SparseConvTensor.from_dense(dense.permute(0, 2, 3, 1))
    assert back.indices.shape[1] == 3 and torch.equal(back.dense(), dense)


def test_indices_edited_in_place_get_maps_of_their_own():
    """VoxelNeXt scales a level's indices in place and concatenates levels: the next conv must see the
    new indices, not the family's cached coordinates (and the cache must not see the edit)."""
    x = random_tensor(spconv, 3, channels=2, dtype=torch.float32)
    conv = spconv.SubMConv3d(2, 2, 3, bias=False)
    y = conv(x)
    before = y.to_native().coords.clone()
    y.indices[:, 1:] *= 2
    z = conv(y)
    assert not torch.equal(z.indices, x.indices) and torch.equal(z.indices, y.indices)
    assert torch.equal(x.to_native().coords, before)  # the family's coordinates are untouched
    fresh = conv(spconv.SparseConvTensor(y.features, y.indices.clone(), [18] * 3, 2))
    torch.testing.assert_close(z.features, fresh.features)
