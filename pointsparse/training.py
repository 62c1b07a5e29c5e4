"""Training, evaluation and prediction of segmentation models on SemanticKITTI-layout data."""

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from .checkpoint import load as load_checkpoint, rng_state, save as save_checkpoint, set_rng_state
from .datasets import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, SemanticKITTI, VoxelConfig, collate
from .metrics import ConfusionMatrix
from .models import build_model
from .tuner import tune


@dataclass(frozen=True)
class TrainConfig:
    data_root: str
    out_dir: str = "runs/minkunet"
    model: str = "minkunet18"
    cr: float = 1.0
    epochs: int = 15
    batch_size: int = 2
    lr: float = 0.24
    weight_decay: float = 1e-4
    warmup_iters: int = 0
    voxel_size: float = 0.05
    max_voxels: Optional[int] = 80000
    train_split: str = "train"
    val_split: str = "val"
    workers: int = 2
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    max_iters_per_epoch: Optional[int] = None
    # Tune every conv layer's strategy for training on the first batch before training (rank 0
    # tunes, the others receive its choices); choices persist in ~/.cache/pointsparse/tuned.json.
    tune: bool = False
    tune_cache: Optional[str] = None


def split_arg(split: str):
    """'train' / 'val' / 'test', or comma-separated sequence numbers."""
    return split if split in ("train", "val", "test") else [int(s) for s in split.split(",") if s]


def evaluation_set(data_root: str, split: str, voxel_size: float) -> SemanticKITTI:
    """Whole scans (no voxel cap, no augmentation) of a split, for validation, eval and predict."""
    return SemanticKITTI(data_root, split_arg(split), VoxelConfig(voxel_size, None, augment=False))


def cosine_with_warmup(warmup: int, total: int):
    """lr factor per iteration: linear warm-up, then cosine from 1 to 0 (the SPVNAS schedule)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))
    return factor


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def load_model(checkpoint: Path, device: str) -> Tuple[nn.Module, Dict]:
    """The model of a checkpoint and the training config it was made with (loaded safely:
    :func:`pointsparse.checkpoint.load`)."""
    state = load_checkpoint(checkpoint, map_location=device)
    config = state["config"]
    model = build_model(config["model"], num_classes=NUM_CLASSES, in_channels=4, cr=config["cr"]).to(device)
    model.load_state_dict(state["model"])
    return model, config


def _progress(iterable, **kwargs):
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are optional
        return iterable
    return tqdm(iterable, disable=rank() != 0, dynamic_ncols=True, **kwargs)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str) -> ConfusionMatrix:
    """Point-level confusion matrix: voxel logits mapped back to every point through ``inverse``."""
    model.eval()
    matrix = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
    for batch in _progress(loader, desc="eval", leave=False):
        logits = model(batch["input"].to(device))
        start = 0
        for count, inverse, point_labels in zip(batch["num_voxels"], batch["inverse"], batch["point_labels"]):
            pred = logits[start:start + count].argmax(1).cpu()
            matrix.update(pred[inverse], point_labels)
            start += count
    if distributed():
        dist.all_reduce(matrix.matrix)
    return matrix


def train(config: TrainConfig, resume: bool = False) -> ConfusionMatrix:
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    voxels = VoxelConfig(config.voxel_size, config.max_voxels, augment=True)
    train_set = SemanticKITTI(config.data_root, split_arg(config.train_split), voxels, config.seed)
    val_set = evaluation_set(config.data_root, config.val_split, config.voxel_size)
    sampler = DistributedSampler(train_set, seed=config.seed) if distributed() else None
    val_sampler = DistributedSampler(val_set, shuffle=False) if distributed() else None
    shuffle_gen = torch.Generator()
    train_loader = DataLoader(train_set, config.batch_size, shuffle=sampler is None, sampler=sampler,
                              collate_fn=collate, num_workers=config.workers, generator=shuffle_gen)
    val_loader = DataLoader(val_set, 1, sampler=val_sampler, collate_fn=collate, num_workers=config.workers)

    device = config.device
    model = build_model(config.model, num_classes=NUM_CLASSES, in_channels=4, cr=config.cr).to(device)
    if distributed():
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                                weight_decay=config.weight_decay)
    iters = len(train_loader)
    if config.max_iters_per_epoch is not None:
        iters = min(iters, config.max_iters_per_epoch)
    schedule = cosine_with_warmup(config.warmup_iters, config.epochs * iters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    use_amp = config.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    checkpoint = Path(config.out_dir) / "last.pt"
    start_epoch = 0
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location=device)
        (model.module if distributed() else model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start_epoch = state["epoch"] + 1
    if config.tune:
        # The loop re-seeds the loader's shuffling every epoch, so this batch changes nothing after.
        first = next(iter(train_loader))["input"].to(device)
        tuned = tune(model, [first], mode="training", cache_path=config.tune_cache, repeats=1)
        print(f"tuned {len(tuned)} conv layers for training", flush=True)
    loss_fn = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    matrix = None
    for epoch in range(start_epoch, config.epochs):
        train_set.set_epoch(epoch)
        shuffle_gen.manual_seed(config.seed + epoch)  # the data order depends on the epoch only
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        bar = _progress(range(iters), desc=f"epoch {epoch + 1}/{config.epochs}")
        batches = iter(train_loader)
        start = time.perf_counter()
        scans = 0
        for _ in bar:
            batch = next(batches)
            with torch.autocast("cuda", enabled=use_amp):
                logits = model(batch["input"].to(device))
                loss = loss_fn(logits.float(), batch["labels"].to(device))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            scans += len(batch["scan"])
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss.item():.3f}", scans_per_s=f"{scans / (time.perf_counter() - start):.2f}",
                                lr=f"{scheduler.get_last_lr()[0]:.4f}")
        matrix = evaluate(model, val_loader, device)
        if rank() == 0:
            print(f"epoch {epoch + 1} validation\n{matrix.table(CLASS_NAMES)}", flush=True)
            save_checkpoint({
                "config": asdict(config), "epoch": epoch,
                "model": (model.module if distributed() else model).state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng_state(), "miou": matrix.miou(),
            }, checkpoint)
    return matrix


def predict(model: nn.Module, config: Dict, data_root: str, split: str, out_root: Path,
            device: str = "cpu", write_ply: bool = False) -> int:
    """Writes ``out_root/sequences/XX/predictions/NNNNNN.label`` (raw ids) for every scan of split
    (and a coloured ``.ply`` beside each with ``write_ply``, through Open3D)."""
    from .datasets import read_points
    from .pointclouds import write_prediction

    model.eval()
    dataset = evaluation_set(data_root, split, config["voxel_size"])
    written = 0
    with torch.no_grad():
        for index in _progress(range(len(dataset)), desc="predict"):
            item = dataset[index]
            batch = collate([item])
            pred = model(batch["input"].to(device)).argmax(1).cpu()[item["inverse"]].numpy()
            scan = Path(item["scan"])
            target = out_root / "sequences" / scan.parent.parent.name / "predictions" / (scan.stem + ".label")
            write_prediction(target, None, pred)
            if write_ply:
                write_prediction(target.with_suffix(".ply"), read_points(scan), pred)
            written += 1
    return written


def predict_scan(model: nn.Module, config: Dict, source, out_path: Path, device: str = "cpu") -> np.ndarray:
    """Per-point training-class predictions of one point cloud (a ``.bin``, ``.pcd`` or ``.ply`` file,
    an Open3D cloud or an array; :func:`pointsparse.pointclouds.read_point_cloud`), written to
    ``out_path`` (``.label`` raw ids, or a coloured cloud by suffix) and returned."""
    from .pointclouds import read_point_cloud, voxelize_scan, write_prediction

    model.eval()
    points = read_point_cloud(source)
    x, inverse = voxelize_scan(points, config["voxel_size"], device)
    with torch.no_grad():
        pred = model(x).argmax(1).cpu()[inverse].numpy()
    write_prediction(out_path, points, pred)
    return pred
