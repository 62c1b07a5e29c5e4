"""Code written for TorchSparse 2.1 on pointsparse: models in TorchSparse's style (MinkUNet-like and
SPVCNN-like) against native twins with converted weights, the API details client code relies on,
and TorchSparse's offset order pinned by one-hot kernels."""

import numpy as np
import pytest
import torch
from torch import nn

import pointsparse as ps
import pointsparse.compat.torchsparse
from pointsparse import point_voxel as pv
from pointsparse.convert import conv_geometry, convert_state_dict, from_pointsparse_weight

pointsparse.compat.torchsparse.install()

import torchsparse  # noqa: E402  (the compatibility layer, installed above)
import torchsparse.nn as spnn  # noqa: E402
import torchsparse.nn.functional as F  # noqa: E402
from torchsparse import PointTensor, SparseTensor  # noqa: E402
from torchsparse.nn.utils import get_kernel_offsets  # noqa: E402
from torchsparse.utils.collate import sparse_collate  # noqa: E402
from torchsparse.utils.quantize import sparse_quantize  # noqa: E402

from helpers import DEVICES, random_tensor  # noqa: E402


# ---- a MinkUNet-like network written as for TorchSparse (SPVNAS style) ----

class TSConvBlock(nn.Sequential):
    def __init__(self, inc, outc, ks=3, stride=1, transposed=False):
        super().__init__(spnn.Conv3d(inc, outc, kernel_size=ks, stride=stride, transposed=transposed),
                         spnn.BatchNorm(outc), spnn.ReLU(True))


class TSResidual(nn.Module):
    def __init__(self, inc, outc):
        super().__init__()
        self.net = nn.Sequential(spnn.Conv3d(inc, outc, 3), spnn.BatchNorm(outc), spnn.ReLU(True),
                                 spnn.Conv3d(outc, outc, 3), spnn.BatchNorm(outc))
        self.downsample = nn.Identity() if inc == outc else nn.Sequential(spnn.Conv3d(inc, outc, 1),
                                                                          spnn.BatchNorm(outc))
        self.relu = spnn.ReLU(True)

    def forward(self, x):
        return self.relu(self.net(x) + self.downsample(x))


class TSMinkUNet(nn.Module):
    def __init__(self, cin=3, classes=5):
        super().__init__()
        self.stem = TSConvBlock(cin, 8)
        self.down = nn.Sequential(TSConvBlock(8, 8, ks=2, stride=2), TSResidual(8, 16))
        self.down2 = nn.Sequential(TSConvBlock(16, 16, ks=3, stride=2), TSResidual(16, 16))
        self.up2 = TSConvBlock(16, 16, ks=3, stride=2, transposed=True)
        self.up = TSConvBlock(32, 8, ks=2, stride=2, transposed=True)
        self.fuse = TSResidual(16, 8)
        self.classifier = nn.Linear(8, classes)

    def forward(self, x):
        x0 = self.stem(x)
        x1 = self.down(x0)
        x2 = self.down2(x1)
        y1 = torchsparse.cat([self.up2(x2), x1])
        y0 = torchsparse.cat([self.up(y1), x0])
        return self.classifier(self.fuse(y0).F)


# ---- its native twin ----

class ConvBlock(nn.Sequential):
    def __init__(self, inc, outc, ks=3, stride=1, transposed=False, outputs=ps.OutputRule.OCCUPIED, padding=None):
        super().__init__(ps.nn.SparseConv3d(inc, outc, ks, stride, transposed=transposed, outputs=outputs,
                                            padding=padding),
                         ps.nn.BatchNorm(outc), ps.nn.ReLU(True))


class Residual(nn.Module):
    def __init__(self, inc, outc):
        super().__init__()
        self.net = nn.Sequential(ps.nn.SparseConv3d(inc, outc, 3), ps.nn.BatchNorm(outc), ps.nn.ReLU(True),
                                 ps.nn.SparseConv3d(outc, outc, 3), ps.nn.BatchNorm(outc))
        self.downsample = nn.Identity() if inc == outc else nn.Sequential(ps.nn.SparseConv3d(inc, outc, 1),
                                                                          ps.nn.BatchNorm(outc))
        self.relu = ps.nn.ReLU(True)

    def forward(self, x):
        return self.relu(self.net(x) + self.downsample(x))


class MinkUNet(nn.Module):
    """TorchSparse's default downsample mode outputs every reached cell, with padding 0."""

    def __init__(self, cin=3, classes=5):
        super().__init__()
        reached = dict(outputs=ps.OutputRule.REACHED, padding=0)
        self.stem = ConvBlock(cin, 8)
        self.down = nn.Sequential(ConvBlock(8, 8, ks=2, stride=2), Residual(8, 16))
        self.down2 = nn.Sequential(ConvBlock(16, 16, ks=3, stride=2, **reached), Residual(16, 16))
        self.up2 = ConvBlock(16, 16, ks=3, stride=2, transposed=True, **reached)
        self.up = ConvBlock(32, 8, ks=2, stride=2, transposed=True)
        self.fuse = Residual(16, 8)
        self.classifier = nn.Linear(8, classes)

    def forward(self, x):
        x0 = self.stem(x)
        x1 = self.down(x0)
        x2 = self.down2(x1)
        y1 = ps.functional.cat([self.up2(x2), x1])
        y0 = ps.functional.cat([self.up(y1), x0])
        return self.classifier(self.fuse(y0).feats)


def scan(seed=0, points=300, span=12):
    x = random_tensor(num_points=points, channels=3, span=span, batches=2, seed=seed)
    order = torch.argsort(ps.ops.pack_coords(x.coords))
    return x.feats[order], x.coords[order]


def randomise_batch_norms(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=m.running_var.dtype) + 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [False, True])
def test_minkunet_in_torchsparse_style_matches_the_native_model(train, device):
    torch.manual_seed(0)
    theirs = TSMinkUNet().double()
    randomise_batch_norms(theirs, 1)
    ours = MinkUNet().double()
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), "torchsparse", "pointsparse", *conv_geometry(ours)))
    theirs.train(train).to(device), ours.train(train).to(device)
    feats, coords = (t.to(device) for t in scan())
    out_theirs = theirs(SparseTensor(feats.clone().requires_grad_(), coords))
    out_ours = ours(ps.SparseTensor(feats.clone().requires_grad_(), coords))
    torch.testing.assert_close(out_theirs, out_ours)
    probe = torch.randn(out_ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)
    (out_theirs * probe).sum().backward()
    (out_ours * probe).sum().backward()
    grads = convert_state_dict({n: p.grad for n, p in theirs.named_parameters()}, "torchsparse", "pointsparse",
                               *conv_geometry(ours))
    for name, p in ours.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)
    # And back: our weights in TorchSparse's layout load into the TorchSparse-style model unchanged.
    again = TSMinkUNet().double().to(device)
    again.load_state_dict(convert_state_dict(ours.state_dict(), "pointsparse", "torchsparse", *conv_geometry(ours)))
    for (name, a), b in zip(again.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_torchsparse_state_dict_names_and_shapes():
    state = TSMinkUNet().state_dict()
    assert state["stem.0.kernel"].shape == (27, 3, 8)
    assert state["down.1.downsample.0.kernel"].shape == (8, 16)       # 1x1x1: [C_in, C_out]
    assert "stem.1.running_mean" in state and "stem.1.module.running_mean" not in state
    ours = MinkUNet().state_dict()
    assert "stem.1.running_mean" in ours and ours["down.1.downsample.0.weight"].shape == (1, 8, 16)


# ---- SPVCNN-like: point-voxel fusion with TorchSparse's functional helpers ----

def ts_initial_voxelize(z: PointTensor) -> SparseTensor:
    int_coords = torch.floor(z.C).int()
    pc_hash = F.sphash(int_coords)
    sparse_hash = torch.unique(pc_hash)
    idx_query = F.sphashquery(pc_hash, sparse_hash)
    counts = F.spcount(idx_query.int(), len(sparse_hash))
    coords = torch.round(F.spvoxelize(torch.floor(z.C), idx_query, counts)).int()
    feats = F.spvoxelize(z.F, idx_query, counts)
    z.additional_features["idx_query"][1] = idx_query
    z.additional_features["counts"][1] = counts
    return SparseTensor(feats, coords, 1)


def ts_point_to_voxel(x: SparseTensor, z: PointTensor) -> SparseTensor:
    s = x.s[0]
    cells = torch.cat([z.C[:, :1], torch.floor(z.C[:, 1:] / s)], 1).int()   # TorchSparse 2.1: indices of the level
    idx_query = F.sphashquery(F.sphash(cells), F.sphash(x.C))
    counts = F.spcount(idx_query.int(), x.C.shape[0])
    return x.derive(F.spvoxelize(z.F, idx_query, counts))


def ts_voxel_to_point(x: SparseTensor, z: PointTensor) -> PointTensor:
    s = x.s[0]
    scaled = z.C[:, 1:] / s
    base = torch.cat([z.C[:, :1], torch.floor(scaled)], 1).int()
    offsets = get_kernel_offsets(2, 1, 1, device=z.F.device)
    idx_query = F.sphashquery(F.sphash(base, offsets), F.sphash(x.C)).transpose(0, 1).contiguous()  # [P, 8]
    weights = F.calc_ti_weights(scaled, idx_query, scale=1)
    return PointTensor(F.spdevoxelize(x.F, idx_query, weights), z.C)


class TSSPVCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = TSConvBlock(3, 8)
        self.down = TSConvBlock(8, 16, ks=2, stride=2)
        self.point = nn.Linear(3, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, z: PointTensor):
        x0 = self.stem(ts_initial_voxelize(z))
        z0 = ts_voxel_to_point(x0, z)
        x1 = self.down(ts_point_to_voxel(x0, z0))
        z1 = ts_voxel_to_point(x1, z0)
        return self.head(z1.F + self.point(z.F))


class SPVCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvBlock(3, 8)
        self.down = ConvBlock(8, 16, ks=2, stride=2)
        self.point = nn.Linear(3, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, points, feats):
        coords = torch.cat([points[:, :1], torch.floor(points[:, 1:])], 1).int()
        coords = torch.unique(coords, dim=0)
        x = ps.SparseTensor(torch.zeros(coords.shape[0], 3, dtype=feats.dtype), coords)
        x0 = self.stem(pv.points_to_voxels(points, feats, x))
        p0 = pv.devoxelize(x0, points)
        x1 = self.down(pv.points_to_voxels(points, p0, x0))
        return self.head(pv.devoxelize(x1, points) + self.point(feats))


def test_spvcnn_in_torchsparse_style_matches_the_native_model():
    torch.manual_seed(0)
    theirs, ours = TSSPVCNN().double(), SPVCNN().double()
    randomise_batch_norms(theirs, 2)
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), "torchsparse", "pointsparse", *conv_geometry(ours)))
    theirs.eval(), ours.eval()
    gen = torch.Generator().manual_seed(4)
    points = torch.cat([torch.randint(0, 2, (400, 1), generator=gen).double(),
                        torch.rand(400, 3, generator=gen, dtype=torch.float64) * 10], 1)
    feats = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    a = feats.clone().requires_grad_()
    b = feats.clone().requires_grad_()
    out_theirs = theirs(PointTensor(a, points))
    out_ours = ours(points, b)
    torch.testing.assert_close(out_theirs, out_ours)
    out_theirs.sum().backward(), out_ours.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


# ---- TorchSparse's offset order, pinned by one-hot kernels ----

@pytest.mark.parametrize("ks,stride", [(2, 2), (3, 1), ((2, 1, 2), (2, 1, 2))])
def test_each_torchsparse_kernel_row_reads_its_documented_offset(ks, stride):
    """A one-hot TorchSparse kernel at row t reads the input at ``o + offset_t`` where offset_t is
    row t of TorchSparse's get_kernel_offsets (even volumes z fastest)."""
    size = torch.tensor(ks if isinstance(ks, tuple) else (ks,) * 3)
    offsets = get_kernel_offsets(tuple(size.tolist()))                   # TorchSparse's own order
    grid = torch.cartesian_prod(torch.arange(4), torch.arange(4), torch.arange(4))
    coords = torch.cat([torch.zeros(64, 1, dtype=torch.long), grid], 1).int()
    feats = torch.arange(64, dtype=torch.float64)[:, None] + 1         # feature = 1 + row id
    conv = spnn.Conv3d(1, 1, kernel_size=ks, stride=stride).double()
    for t in range(offsets.shape[0]):
        with torch.no_grad():
            conv.kernel.zero_()
            conv.kernel[t] = 1
        y = conv(SparseTensor(feats, coords))
        step = torch.tensor(y.s)
        source = y.C[:, 1:] * step + offsets[t]                           # finest-grid input of each output
        inside = ((source >= 0) & (source < 4)).all(1)
        want = torch.where(inside, (source[:, 0] * 16 + source[:, 1] * 4 + source[:, 2] + 1).double(),
                           torch.zeros(()).double())
        torch.testing.assert_close(y.F[:, 0], want, msg=f"row {t}")


# ---- API details TorchSparse client code relies on ----

def test_coordinates_are_cell_indices_of_the_tensor_stride():
    feats, coords = scan(seed=5)
    x = SparseTensor(feats, coords)
    y = spnn.Conv3d(3, 4, 2, stride=2).double()(x)
    assert y.s == (2, 2, 2) and y.stride == (2, 2, 2)
    assert torch.equal(torch.unique(y.C, dim=0), torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 2], 1), dim=0))
    # A point-to-voxel lookup written for TorchSparse's convention finds every voxel.
    cells = torch.cat([coords[:, :1], coords[:, 1:] // 2], 1)
    assert bool((F.sphashquery(F.sphash(cells), F.sphash(y.C)) >= 0).all())


def test_strided_conv_follows_the_downsample_mode():
    feats, coords = scan(seed=6)
    conv = spnn.Conv3d(3, 4, 3, stride=2, padding=1).double()
    reached = conv(SparseTensor(feats, coords))
    native = ps.kernel_map(ps.SparseTensor(feats, coords), 3, 2, outputs=ps.OutputRule.REACHED)
    assert reached.C.shape[0] == native.num_out
    F.set_downsample_mode("minkowski")
    try:
        occupied = conv(SparseTensor(feats, coords))
    finally:
        F.set_downsample_mode("spconv")
    assert occupied.C.shape[0] == ps.kernel_map(ps.SparseTensor(feats, coords), 3, 2).num_out < reached.C.shape[0]


def test_attributes_in_place_moves_dense_and_an_extensible_cache():
    feats, coords = scan(seed=7, points=40, span=4)
    x = SparseTensor(feats, coords, spatial_range=(2, 4, 4, 4))
    assert x.F is x.feats and x.C is x.coords and x.s == (1, 1, 1)
    assert x.to("cpu") is x and x.cpu() is x
    dense = x.dense()
    assert dense.shape == (2, 4, 4, 4, 3)                                 # channel last
    assert torch.equal(dense[coords[:, 0].long(), coords[:, 1].long(), coords[:, 2].long(), coords[:, 3].long()], feats)
    x._caches.idx_query = {"mine": 1}                                      # client code extends the cache
    y = spnn.ReLU(True)(spnn.Conv3d(3, 3, 3).double()(x))
    assert y._caches is x._caches and y._caches.idx_query == {"mine": 1}
    assert y.spatial_range == (2, 4, 4, 4)
    assert x.half() is x and x.F.dtype == torch.float16


def test_sparse_quantize_and_collate_follow_torchsparse():
    points = np.random.default_rng(0).uniform(0, 5, size=(100, 3)).astype(np.float32)
    coords, index, inverse = sparse_quantize(points, return_index=True, return_inverse=True)  # voxel_size 1
    assert isinstance(coords, np.ndarray) and coords.dtype == np.int32
    assert np.array_equal(coords[inverse], np.floor(points).astype(np.int32))
    assert np.array_equal(coords, np.floor(points[index]).astype(np.int32))
    four = sparse_quantize(np.concatenate([points, points[:, :1]], 1), (0.5, 0.5, 0.5, 1.0))
    assert four.shape[1] == 4
    items = [SparseTensor(torch.randn(len(c), 2), torch.from_numpy(c)) for c in (coords, coords[:10])]
    batch = sparse_collate(items)
    assert batch.C.shape == (len(coords) + 10, 4) and batch.C[-1, 0] == 1 and batch.C[0, 0] == 0


def test_conv_config_calls_are_accepted_and_mapped():
    feats, coords = scan(seed=8)
    conv = spnn.Conv3d(3, 4, 3).double()
    want = conv(SparseTensor(feats, coords)).F
    config = F.conv_config.get_default_conv_config()
    for dataflow in (F.Dataflow.GatherScatter, F.Dataflow.ImplicitGEMM):
        config.dataflow = dataflow
        F.conv_config.set_global_conv_config(config)
        try:
            torch.testing.assert_close(conv(SparseTensor(feats, coords)).F, want)
        finally:
            F.conv_config.clear_global_conv_config()
    assert F.native_config(dict(dataflow=F.Dataflow.ImplicitGEMM, ifsort=True, split_mask_num=2)).implicit.splits == 2
    with pytest.warns(UserWarning, match="ignored"):
        torchsparse.tune(None)


def test_one_hot_weights_round_trip_through_every_format():
    # Each offset of a (3, 2, 1) kernel pinned by a one-hot weight survives every format and back.
    size = (3, 2, 1)
    for k in range(6):
        weight = torch.zeros(6, 2, 3)
        weight[k, 1, 2] = 1
        state = {"conv.weight": weight, "conv.bias": torch.arange(3.0), "bn.running_mean": torch.ones(3),
                 "bn.weight": torch.ones(3)}
        for fmt in ps.convert.FORMATS:
            out = convert_state_dict(state, "pointsparse", fmt, {"conv": size})
            back = convert_state_dict(out, fmt, "pointsparse", {"conv": size})
            assert back.keys() == state.keys(), fmt
            for key in state:
                assert torch.equal(back[key], state[key]), (fmt, key)
    assert from_pointsparse_weight(torch.zeros(1, 2, 3), "minkowski", 1).shape == (2, 3)
    nested = convert_state_dict({"bn.running_mean": torch.ones(3)}, "pointsparse", "minkowski")
    assert list(nested) == ["bn.bn.running_mean"]


def test_backend_hash_table_answers_spvnas_queries():
    """SPVNAS 2.1 queries TorchSparse's GPUHashTable directly: values are row + 1 of the target at
    each query (times stride, plus each kernel offset), 0 where absent."""
    feats, coords = scan(seed=9, points=200, span=6)
    target = coords
    queries = torch.cat([coords[:50], coords[:10] + torch.tensor([0, 7, 0, 0], dtype=torch.int32)])
    table = torchsparse.backend.GPUHashTable(torch.zeros(2 * len(target), dtype=torch.int64),
                                             torch.zeros(2 * len(target), dtype=torch.int32))
    table.insert_coords(target[:, [1, 2, 3, 0]])
    for size in (1, 2, 3):
        found = table.lookup_coords(queries[:, [1, 2, 3, 0]], torch.tensor((size,) * 3, dtype=torch.int32),
                                    torch.tensor((1, 1, 1), dtype=torch.int32), size ** 3)[: len(queries)] - 1
        offsets = get_kernel_offsets(size)
        want = F.sphashquery(F.sphash(queries, offsets), F.sphash(target)).t()
        assert torch.equal(found.long(), want), size
    assert bool((found[:50, 13] == torch.arange(50)).all()) and bool((found[50:, 13] == -1).all())
