"""``pointsparse`` command line: train, eval, predict, generate (synthetic SemanticKITTI data),
profile (every conv layer under every strategy), prune (2:4 weight pruning) and convert
(checkpoints between pointsparse, TorchSparse, MinkowskiEngine and spconv)."""

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .extras import ExtraUnavailableError, import_extra

# The embedded default data set: five training streets of 8 scans (sequences 00-04) and one
# validation street (08) of 4 scans.
SYNTHETIC_SEQUENCES = {0: 8, 1: 8, 2: 8, 3: 8, 4: 8, 8: 4}


def default_data_root() -> Path:
    """The synthetic data set in the cache folder, generated on first use."""
    cache = Path(os.environ.get("POINTSPARSE_CACHE", Path.home() / ".cache" / "pointsparse"))
    root = cache / "synthetic-kitti"
    marker = root / ".complete"
    if not marker.exists():
        from .datasets.synthetic import generate_dataset

        print(f"generating synthetic SemanticKITTI scans into {root} ...", flush=True)
        generate_dataset(root, SYNTHETIC_SEQUENCES)
        marker.write_text("ok\n")
    return root


def _train(args) -> int:
    from .memory import retain_freed_memory
    from .training import TrainConfig, train

    retain_freed_memory()  # large feature tensors would page-fault afresh on every step otherwise

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(args.device)
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    values["data_root"] = str(args.data_root or default_data_root())
    values["max_voxels"] = None if args.max_voxels == 0 else args.max_voxels
    matrix = train(TrainConfig(**values), resume=args.resume)
    if world > 1:
        # Gloo's worker threads outlive destroy_process_group, and a worker that drops the last
        # reference to a finished collective's tensors takes the GIL to free their Python objects;
        # during interpreter shutdown that kills the thread inside a destructor: std::terminate,
        # SIGABRT at exit (pytorch/pytorch#190489; 1 run in 6-8 of a 2-rank CPU run here). So every
        # rank waits for the others (rank 0 writes the checkpoint), then sleeps with the GIL
        # released so the workers can finish releasing the barrier's and the last all-reduce's work.
        torch.distributed.barrier()
        time.sleep(0.05)
        torch.distributed.destroy_process_group()
    return 0 if matrix is not None else 1


def _eval(args) -> int:
    from torch.utils.data import DataLoader

    from .datasets import CLASS_NAMES, collate
    from .training import evaluate, evaluation_set, load_model

    model, config = load_model(Path(args.checkpoint), args.device)
    data = evaluation_set(args.data_root or config["data_root"], args.split, config["voxel_size"])
    matrix = evaluate(model, DataLoader(data, 1, collate_fn=collate, num_workers=args.workers), args.device)
    print(matrix.table(CLASS_NAMES))
    return 0


def _predict(args) -> int:
    from .training import load_model, predict, predict_scan

    if args.ply:
        import_extra("open3d", "predict --ply")  # before the model runs over every scan
    model, config = load_model(Path(args.checkpoint), args.device)
    if args.scan:
        scan = Path(args.scan)
        out = Path(args.out)
        target = out if out.suffix else out / (scan.stem + ".label")
        pred = predict_scan(model, config, scan, target, args.device)
        print(f"wrote {len(pred)} point predictions to {target}")
        return 0
    root = args.data_root or config["data_root"]
    count = predict(model, config, root, args.split, Path(args.out), args.device, args.ply)
    print(f"wrote {count} prediction files under {args.out}/sequences/*/predictions")
    return 0


def _generate(args) -> int:
    from .datasets.synthetic import generate_dataset

    sequences = {int(s): args.scans for s in args.sequences.split(",")}
    generate_dataset(Path(args.out), sequences, args.seed)
    print(f"wrote {sum(sequences.values())} scans under {args.out}")
    return 0


def _profile_points(args) -> np.ndarray:
    """float32 [N, 4] points of the scan to profile: --scan, the first scan of --data-root, or synthetic."""
    if args.scan:
        path = Path(args.scan)
        if not path.is_file():
            raise SystemExit(f"scan {path} not found")
        return np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    if args.data_root:
        from .datasets.semantic_kitti import resolve_sequences
        from .training import split_arg

        root = Path(args.data_root)
        scans = [scan for seq in resolve_sequences(split_arg(args.split))
                 for scan in sorted((root / "sequences" / seq / "velodyne").glob("*.bin"))]
        if not scans:
            raise SystemExit(f"no scans of split {args.split!r} under {root / 'sequences'}")
        return np.fromfile(scans[0], dtype=np.float32).reshape(-1, 4)
    from .datasets.synthetic import LidarConfig, make_scene, scan

    rng = np.random.default_rng(0)
    return scan(make_scene(rng), 0, LidarConfig(), rng)[0]


def _profile(args) -> int:
    from tqdm import tqdm

    from .models import build_model
    from .profiler import profile, scan_input
    from .strategies import check_families

    families = args.strategies.split(",") if args.strategies else None
    if families is not None:
        check_families(families)
    x = scan_input(_profile_points(args), args.voxel_size, args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=19, in_channels=4, cr=args.cr).to(args.device)
    report = profile(model, x, model_name=f"{args.model} cr {args.cr}", repeats=args.repeats, quick=args.quick,
                     families=families, progress=lambda layers: tqdm(layers, desc="layers", unit="layer"))
    print(report.table())
    for path in report.write(Path(args.out)):
        print(f"wrote {path}")
    return 0


def _prune(args) -> int:
    from .prune_command import run

    return run(args)


def _convert(args) -> int:
    from .convert import convert_checkpoint
    from .models import build_model

    model = None
    if args.model:
        model = build_model(args.model, num_classes=args.num_classes, in_channels=args.in_channels, cr=args.cr)
    counts = convert_checkpoint(args.input, args.output, args.source, args.target, model, args.axes)
    print(f"converted {counts['conv_weights']} conv weights ({counts['tensors']} tensors) from {args.source} "
          f"to {args.target}: wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pointsparse")
    sub = parser.add_subparsers(dest="command", required=True)

    from .training import TrainConfig  # its defaults are the command's

    default = {f.name: f.default for f in fields(TrainConfig)}
    train = sub.add_parser("train", help="train a segmentation model (default: MinkUNet18 on synthetic scans)")
    train.add_argument("--data-root", help="folder holding sequences/ (default: synthetic scans in the cache)")
    train.add_argument("--out-dir", default=default["out_dir"])
    train.add_argument("--model", default=default["model"])
    train.add_argument("--cr", type=float, default=default["cr"], help="width multiplier")
    train.add_argument("--epochs", type=int, default=default["epochs"])
    train.add_argument("--batch-size", type=int, default=default["batch_size"])
    train.add_argument("--lr", type=float, default=default["lr"])
    train.add_argument("--warmup-iters", type=int, default=default["warmup_iters"])
    train.add_argument("--voxel-size", type=float, default=default["voxel_size"])
    train.add_argument("--max-voxels", type=int, default=default["max_voxels"], help="0 keeps all voxels")
    train.add_argument("--train-split", default=default["train_split"], help="train / val / test or e.g. 0,1,2")
    train.add_argument("--val-split", default=default["val_split"])
    train.add_argument("--workers", type=int, default=default["workers"])
    train.add_argument("--seed", type=int, default=default["seed"])
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument("--no-amp", dest="amp", action="store_false", help="disable AMP on CUDA")
    train.add_argument("--max-iters-per-epoch", type=int)
    train.add_argument("--resume", action="store_true", help="continue from out-dir/last.pt")
    train.add_argument("--tune", action="store_true",
                       help="pick each conv layer's fastest strategy for training on the first batch")
    train.add_argument("--tune-cache", help="JSON file of tuned choices (default ~/.cache/pointsparse/tuned.json)")
    train.set_defaults(run=_train)

    for name, run, help_text in (("eval", _eval, "per-class IoU of a checkpoint"),
                                 ("predict", _predict, "write SemanticKITTI prediction files")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("checkpoint")
        cmd.add_argument("--data-root", help="default: the data root the checkpoint was trained on")
        cmd.add_argument("--split", default="val")
        cmd.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        cmd.add_argument("--workers", type=int, default=2)
        if name == "predict":
            cmd.add_argument("--scan", help="one point-cloud file (.bin, .pcd, .ply) instead of a data root")
            cmd.add_argument("--out", default="predictions",
                             help="folder (a data root's predictions, or <scan>.label for --scan) or, with "
                                  "--scan, a file: .label (raw ids) or .ply / .pcd (coloured, needs open3d)")
            cmd.add_argument("--ply", action="store_true", help="also write coloured .ply (needs open3d)")
        cmd.set_defaults(run=run)

    gen = sub.add_parser("generate", help="write synthetic scans in the SemanticKITTI layout")
    gen.add_argument("out")
    gen.add_argument("--sequences", default="0,8")
    gen.add_argument("--scans", type=int, default=10)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(run=_generate)

    prune = sub.add_parser("prune", help="2:4-prune a trained checkpoint and report mIoU, non-zeros and bytes")
    prune.add_argument("checkpoint")
    prune.add_argument("--method", default="learned", help="magnitude, permute or learned (the one written)")
    prune.add_argument("--out", required=True, help="pruned checkpoint (the JSON report goes next to it)")
    prune.add_argument("--data-root", help="default: the data root the checkpoint was trained on")
    prune.add_argument("--split", default="val", help="evaluation split")
    prune.add_argument("--eval-data-root", help="data root of the evaluation split (default: --data-root), e.g. more "
                       "held-out scans from `pointsparse generate`")
    prune.add_argument("--train-split", default="train", help="split the learned masks train on")
    prune.add_argument("--learn-steps", type=int, default=200, help="batches of mask learning")
    prune.add_argument("--learn-lr", type=float, default=0.05)
    prune.add_argument("--learn-temperature", type=float, nargs=2, default=[2.0, 0.1], metavar=("START", "END"),
                       help="Gumbel-softmax temperature of mask learning, annealed geometrically from START to END")
    prune.add_argument("--learn-scale", type=float, default=10.0,
                       help="initial mask logits: this times each 2-of-4 pattern's share of the largest kept magnitude")
    prune.add_argument("--finetune-epochs", type=int, default=0, help="SR-STE recovery epochs of the chosen method")
    prune.add_argument("--finetune-lr", type=float, default=0.01)
    prune.add_argument("--distill", type=float, default=0.0,
                       help="weight in [0, 1] of distillation from the dense model's logits (learned masks, SR-STE)")
    prune.add_argument("--distill-temperature", type=float, default=2.0)
    prune.add_argument("--recalibrate", type=int, default=20,
                       help="batches of whole training scans on which every scored model's batch-norm "
                            "statistics are re-estimated (0: off)")
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--sensitivity-budget", type=float,
                       help="prune only the least sensitive layers, their mIoU drops summing to at most this")
    prune.add_argument("--batch-size", type=int, default=2)
    prune.add_argument("--workers", type=int, default=2)
    prune.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    prune.set_defaults(run=_prune)

    from .convert import FORMATS

    conv = sub.add_parser("convert", help="convert a checkpoint between pointsparse, TorchSparse, MinkowskiEngine "
                                          "and spconv layouts")
    conv.add_argument("input")
    conv.add_argument("output")
    conv.add_argument("--from", dest="source", required=True, choices=FORMATS)
    conv.add_argument("--to", dest="target", required=True, choices=FORMATS)
    conv.add_argument("--model", help="a registered pointsparse model whose convs give kernel sizes and strides "
                                      "(needed for kernels whose volume is not a cube)")
    conv.add_argument("--cr", type=float, default=1.0)
    conv.add_argument("--num-classes", type=int, default=19)
    conv.add_argument("--in-channels", type=int, default=4)
    conv.add_argument("--axes", default="xyz", choices=("xyz", "zyx"),
                      help="spconv index axes as pointsparse's x, y, z (xyz) or reversed (zyx, OpenPCDet)")
    conv.set_defaults(run=_convert)

    prof = sub.add_parser("profile", help="time every conv layer of a model under every strategy")
    prof.add_argument("--scan", help="a KITTI-format .bin scan (default: a synthetic scan)")
    prof.add_argument("--data-root", help="folder holding sequences/: profile its first scan of --split")
    prof.add_argument("--split", default="val")
    prof.add_argument("--model", default="minkunet18")
    prof.add_argument("--cr", type=float, default=1.0, help="width multiplier")
    prof.add_argument("--voxel-size", type=float, default=0.05)
    prof.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    prof.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    prof.add_argument("--quick", action="store_true", help="one setting per strategy family")
    prof.add_argument("--strategies", help="comma-separated families to profile: fused, ggs, implicit (default all)")
    prof.add_argument("--out", default="runs/profile", help="folder for report.json, report.csv and PNGs")
    prof.set_defaults(run=_profile)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ExtraUnavailableError as error:  # what to install, not a traceback from inside the extra
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    sys.exit(main())
