"""Code written for spconv 2.x on pointsparse: a VoxelNet-like backbone with a UNet branch in
spconv's style against its native twin with converted weights, and (where spconv's CPU package is
installed) against spconv itself with the same checkpoint."""

import pytest
import torch
from torch import nn

import pointsparse as ps
import pointsparse.compat.spconv as spconv
from pointsparse.convert import convert_state_dict

from helpers import DEVICES, random_tensor, require_extra

REACHED = ps.OutputRule.REACHED
SHAPE = [21, 13, 9]


def backbone(sp, bias=True):
    """OpenPCDet VoxelBackBone8x-like, small, with one inverse conv back up; built from module ``sp``
    (this compatibility layer or spconv itself, whose CPU package has no conv bias)."""

    def block(cin, cout, kind, key, stride=1, padding=0):
        conv = (sp.SubMConv3d(cin, cout, 3, padding=1, bias=False, indice_key=key) if kind == "subm" else
                sp.SparseConv3d(cin, cout, 3, stride, padding, bias=False, indice_key=key))
        return sp.SparseSequential(conv, nn.BatchNorm1d(cout), nn.ReLU())

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_input = block(4, 8, "subm", "subm1")
            self.conv1 = block(8, 8, "subm", "subm1")
            self.conv2 = sp.SparseSequential(block(8, 16, "spconv", "spconv2", 2, 1), block(16, 16, "subm", "subm2"))
            self.conv3 = sp.SparseSequential(block(16, 16, "spconv", "spconv3", 2, (0, 1, 1)),
                                             block(16, 16, "subm", "subm3"))
            self.conv_out = sp.SparseSequential(
                sp.SparseConv3d(16, 24, (3, 1, 1), (2, 1, 1), padding=0, bias=bias, indice_key="spconv_down2"),
                nn.BatchNorm1d(24), nn.ReLU())
            self.up3 = sp.SparseInverseConv3d(16, 16, 3, indice_key="spconv3", bias=False)
            self.up2 = sp.SparseInverseConv3d(32, 8, 3, indice_key="spconv2", bias=bias)

        def forward(self, x):
            x1 = self.conv1(self.conv_input(x))
            x2 = self.conv2(x1)
            x3 = self.conv3(x2)
            out = self.conv_out(x3)
            u2 = self.up3(x3)
            u2 = u2.replace_feature(torch.cat([u2.features, x2.features], 1))
            u1 = self.up2(u2)
            return out, u1.replace_feature(u1.features + x1.features)

    return Backbone()


class NativeBackbone(nn.Module):
    """The same network in pointsparse.nn."""

    def __init__(self):
        super().__init__()

        def block(cin, cout, stride=1, padding=None):
            rule = {} if stride == 1 else dict(outputs=REACHED, padding=padding)
            return nn.Sequential(ps.nn.SparseConv3d(cin, cout, 3, stride, **rule), ps.nn.BatchNorm(cout),
                                 ps.nn.ReLU())

        self.conv_input, self.conv1 = block(4, 8), block(8, 8)
        self.conv2 = nn.Sequential(block(8, 16, 2, 1), block(16, 16))
        self.conv3 = nn.Sequential(block(16, 16, 2, (0, 1, 1)), block(16, 16))
        self.conv_out = nn.Sequential(ps.nn.SparseConv3d(16, 24, (3, 1, 1), (2, 1, 1), bias=True, outputs=REACHED,
                                                         padding=0), ps.nn.BatchNorm(24), ps.nn.ReLU())
        self.up3 = ps.nn.SparseConv3d(16, 16, 3, 2, transposed=True, outputs=REACHED, padding=(0, 1, 1))
        self.up2 = ps.nn.SparseConv3d(32, 8, 3, 2, bias=True, transposed=True, outputs=REACHED, padding=1)

    def forward(self, x):
        x1 = self.conv1(self.conv_input(x))
        x2 = self.conv2(x1)
        x3 = self.conv3(x2)
        out = self.conv_out(x3)
        u1 = self.up2(ps.functional.cat([self.up3(x3), x2]))
        return out, u1 + x1


def state_for_native(state):
    """spconv's module names -> the native twin's: SparseSequential index 0 is the conv in both."""
    return convert_state_dict(state, "spconv", "pointsparse")


def voxels(seed=0):
    x = random_tensor(num_points=400, channels=4, span=9, batches=2, seed=seed)
    coords = x.coords.clone()
    coords[:, 1] *= 2                                             # d0 spans 0..16 of 21
    return x.feats, coords


def randomise(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=m.running_mean.dtype))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=m.running_var.dtype) + 0.5)
        for name in ("weight", "bias"):
            p = getattr(m, name, None)
            if isinstance(p, nn.Parameter) and p.dim() == 5:
                p.data.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [False, True])
def test_spconv_style_backbone_matches_the_native_model(train, device):
    torch.manual_seed(0)
    theirs = backbone(spconv).double()
    randomise(theirs, 1)
    ours = NativeBackbone().double()
    ours.load_state_dict(state_for_native(theirs.state_dict()))
    theirs.train(train).to(device), ours.train(train).to(device)
    feats, coords = (t.to(device) for t in voxels())
    a, b = feats.clone().requires_grad_(), feats.clone().requires_grad_()
    out_t, up_t = theirs(spconv.SparseConvTensor(a, coords, SHAPE, 2))
    out_o, up_o = ours(ps.SparseTensor(b, coords, spatial_range=SHAPE))
    assert torch.equal(up_t.indices, coords)                     # back at the input's indices, in order
    assert out_t.spatial_shape == [2, 4, 3] and list(out_o.spatial_range) == [2, 4, 3]
    stride = torch.tensor(out_o.stride, dtype=torch.int32, device=device)
    assert torch.equal(out_t.indices[:, 1:] * stride, out_o.coords[:, 1:])
    torch.testing.assert_close(out_t.features, out_o.feats)
    torch.testing.assert_close(up_t.features, up_o.feats)
    (out_t.features.sum() + up_t.features.pow(2).sum()).backward()
    (out_o.feats.sum() + up_o.feats.pow(2).sum()).backward()
    torch.testing.assert_close(a.grad, b.grad)
    grads = state_for_native({n: p.grad for n, p in theirs.named_parameters()})
    for name, p in ours.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_spconv_checkpoint_gives_spconvs_own_outputs():
    from pointsparse.bench.spconv_baseline import import_spconv

    require_extra("spconv")
    real = import_spconv()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv's CPU scatter races at more threads
    try:
        torch.manual_seed(0)
        reference = backbone(real, bias=False).float()
        randomise(reference, 2)
        reference.eval()
        mine = backbone(spconv, bias=False).float()
        mine.load_state_dict(reference.state_dict())             # a spconv checkpoint, unchanged
        mine.eval()
        feats, coords = voxels(seed=3)
        with torch.no_grad():
            want = reference(real.SparseConvTensor(feats.float(), coords, SHAPE, 2))
            got = mine(spconv.SparseConvTensor(feats.float(), coords, SHAPE, 2))
    finally:
        torch.set_num_threads(threads)
    for w, g in zip(want, got):
        order_w = torch.argsort(ps.ops.pack_coords(w.indices))
        order_g = torch.argsort(ps.ops.pack_coords(g.indices))
        assert torch.equal(w.indices[order_w], g.indices[order_g])
        assert list(w.spatial_shape) == g.spatial_shape
        torch.testing.assert_close(w.features[order_w], g.features[order_g], atol=1e-4, rtol=1e-4)


def test_rsck_checkpoints_load_and_positional_padding_is_fifth():
    conv = spconv.SparseConv3d(2, 3, 3, 2, 1)                      # (in, out, kernel, stride, padding)
    assert conv.padding == (1, 1, 1) and conv.bias is not None
    rsck = torch.randn(3, 3, 3, 2, 3)
    conv.load_state_dict({"weight": rsck, "bias": torch.zeros(3)})
    assert torch.equal(conv.weight, rsck.permute(4, 0, 1, 2, 3))
    with pytest.raises(NotImplementedError):
        spconv.SparseConv3d(2, 3, 3, groups=2)


def test_tensor_api():
    feats, coords = voxels(seed=4)
    x = spconv.SparseConvTensor(feats, coords, SHAPE, 2)
    with pytest.raises(ValueError, match="replace_feature"):
        x.features = feats
    y = x.replace_feature(feats * 2)
    assert y.indices is x.indices and y.indice_dict is x.indice_dict
    dense = x.dense()
    assert dense.shape == (2, 4, *SHAPE)
    assert torch.equal(dense[coords[:, 0].long(), :, coords[:, 1].long(), coords[:, 2].long(), coords[:, 3].long()],
                       feats)
    back = spconv.SparseConvTensor.from_dense(x.dense(channels_first=False))
    assert back.indices.shape[0] == int((dense.abs().sum(1) > 0).sum())
    with pytest.raises(ValueError, match="indice_key"):
        spconv.SparseInverseConv3d(4, 4, 3, indice_key="missing")(x)
    with pytest.raises(TypeError, match="SparseConvTensor"):
        spconv.SubMConv3d(4, 4, 3)(feats)
