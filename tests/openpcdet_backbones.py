"""OpenPCDet's sparse backbones (tests/fixtures/openpcdet, unmodified) on one engine, in a process of
their own: ``spconv`` (its CPU package) or ``pointsparse`` (``pointsparse.compat.spconv.install()``).

    python tests/openpcdet_backbones.py --engine pointsparse --scan SCAN --out OUT.pt [--weights W.pt]

Each backbone gets a voxelised real scan (OpenPCDet's KITTI voxel grid; pillars for the 2-D one),
runs forward in training mode in float64 and backward from a fixed random loss; OUT holds per
backbone the outputs (rows sorted by index, so that the engines' orders do not matter), the dense
maps, the gradients of the input features and of every weight, and the state dict it ran with
(``--weights``: the state dicts to load, e.g. another engine's).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
VOXEL = dict(vsize_xyz=[0.05, 0.05, 0.1], coors_range_xyz=[0, -40, -3, 70.4, 40, 1])
PILLAR = dict(vsize_xyz=[0.16, 0.16, 4], coors_range_xyz=[0, -39.68, -3, 69.12, 39.68, 1])


class Config(dict):
    """OpenPCDet's EasyDict, as far as the backbones read it."""

    __getattr__ = dict.get


def voxel_input(points: np.ndarray, generator_class, grid: dict, max_points: int):
    """(mean features of each voxel [M, 4], coords [M, 4] as (batch, z, y, x), grid size xyz) of
    two batch items, the second the scan shifted by 0.3 m along x, through the engine's own
    voxel generator as OpenPCDet's data processor calls it."""
    generator = generator_class(num_point_features=4, max_num_voxels=8000, max_num_points_per_voxel=max_points,
                                **grid)
    feats, coords = [], []
    for batch, cloud in enumerate((points, points + np.float32([0.3, 0, 0, 0]))):
        import cumm.tensorview as tv  # spconv's, or pointsparse's stand-in where cumm is missing

        voxels, indices, counts = (t.numpy() for t in generator.point_to_voxel(tv.from_numpy(cloud)))
        feats.append(voxels.sum(1) / np.maximum(counts, 1)[:, None])             # OpenPCDet's MeanVFE
        coords.append(np.c_[np.full(len(indices), batch), indices])
    size, bounds = np.float32(grid["vsize_xyz"]), np.float32(grid["coors_range_xyz"])
    grid_size = np.round((bounds[3:] - bounds[:3]) / size).astype(np.int64)
    return (torch.from_numpy(np.concatenate(feats)).double(), torch.from_numpy(np.concatenate(coords)).int(),
            grid_size)


def rows_by_index(features: torch.Tensor, indices: torch.Tensor):
    order = np.lexsort(indices.numpy().T[::-1])
    return features.detach()[order], indices[order]


def run(engine: str, scan: Path, weights: dict) -> dict:
    if engine == "pointsparse":
        import pointsparse.compat.spconv

        pointsparse.compat.spconv.install()
    else:  # spconv's CPU package: its backward asks for a CUDA stream, its scatter-add races on threads
        import spconv.pytorch.ops

        spconv.pytorch.ops.get_current_stream = lambda: 0
        torch.set_num_threads(1)
    sys.path.insert(0, str(HERE / "fixtures" / "openpcdet"))
    from pcdet.models.backbones_3d import spconv_backbone, spconv_backbone_2d, spconv_backbone_voxelnext
    from pcdet.utils.spconv_utils import spconv  # the engine as OpenPCDet sees it

    generator = __import__("spconv.utils", fromlist=["Point2VoxelCPU3d"]).Point2VoxelCPU3d
    points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)[::4]
    results = {"engine": engine, "spconv_is": spconv.__name__}
    cases = (("VoxelBackBone8x", spconv_backbone.VoxelBackBone8x, Config(), VOXEL, 5),
             ("VoxelResBackBone8x", spconv_backbone.VoxelResBackBone8x, Config(), VOXEL, 5),
             ("VoxelResBackBone8xVoxelNeXt", spconv_backbone_voxelnext.VoxelResBackBone8xVoxelNeXt,
              Config(CHANNELS=[8, 16, 16, 32, 32], OUT_CHANNEL=32), VOXEL, 5),
             ("PillarRes18BackBone8x", spconv_backbone_2d.PillarRes18BackBone8x, Config(), PILLAR, 32))
    for name, cls, config, grid, max_points in cases:
        feats, coords, grid_size = voxel_input(points, generator, grid, max_points)
        torch.manual_seed(0)
        pillars = grid is PILLAR
        model = cls(config, input_channels=4, grid_size=grid_size).double().train()
        if name in weights:
            model.load_state_dict(weights[name])
        if pillars:  # PillarRes18BackBone8x takes 32 features per pillar, (batch, y, x)
            feats = torch.cat([feats, feats.square(), feats.sin(), feats.cos()] * 2, 1)
            coords = coords[:, [0, 2, 3]]
        feats.requires_grad_()
        batch = {"batch_size": 2, "pillar_features" if pillars else "voxel_features": feats,
                 "pillar_coords" if pillars else "voxel_coords": coords}
        out = model(batch)
        record, loss = {"state_dict": {k: v.clone() for k, v in model.state_dict().items()}}, 0.0
        tensors = out["multi_scale_2d_features"] if pillars else {**out["multi_scale_3d_features"],
                                                                    "encoded": out["encoded_spconv_tensor"]}
        for key, tensor in tensors.items():
            if isinstance(tensor, torch.Tensor):     # the 2-D backbone's dense levels
                dense = tensor
            else:
                record[key] = rows_by_index(tensor.features, tensor.indices)
                dense = tensor.dense() if key == "encoded" or pillars else None  # the finer 3-D grids are GiBs
            if dense is not None:
                record[key + " dense"] = dense.detach()
                probe = torch.randn(dense.shape, generator=torch.Generator().manual_seed(len(key)), dtype=dense.dtype)
                loss = loss + (dense * probe).sum()
        loss.backward()
        record["feats grad"] = feats.grad
        record["weight grads"] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results[name] = record
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("spconv", "pointsparse"), required=True)
    parser.add_argument("--scan", type=Path, required=True)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    weights = {}
    if args.weights:
        saved = torch.load(args.weights, weights_only=False)
        weights = {name: record["state_dict"] for name, record in saved.items() if isinstance(record, dict)}
    torch.save(run(args.engine, args.scan, weights), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
