"""``pointsparse prune``: 2:4-prune a trained checkpoint and report what it cost.

Every method runs from the dense checkpoint on the same data: magnitude, channel permutation and
learned masks (frozen weights, mask logits trained on the training split with the task loss);
``--finetune-epochs`` then recovers the chosen one with SR-STE (weights trained, masks recomputed).
``--distill A`` trains both on a mix of the task loss and the dense model's soft predictions
(weight A of the distillation term, temperature ``--distill-temperature``).
``--sensitivity-budget B`` first prunes one layer at a time, prints and plots each layer's mIoU drop,
and prunes only the least sensitive layers whose drops add up to at most B points. Every model scored,
the dense one and each sensitivity trial included, first has its batch-norm statistics re-estimated
on the same ``--recalibrate`` batches of whole training scans (:func:`pruning.recalibrate_batch_norm`;
the learned masks need it most, since their statistics saw Gumbel samples, not the final masks).
The report compares them:
validation mIoU (official, over all 19 classes, and over the classes present; the latter also before
recalibration), the cross entropy on the calibration scans (what mask learning minimises),
parameters, non-zeros, and checkpoint bytes dense, as saved (masks included, loadable by
``pointsparse eval`` unchanged) and compressed (:func:`pruning.compress_state_dict`).
The chosen method's model is written to ``--out``, the report next to it as JSON.
"""

import copy
import io
import itertools
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import pruning
from .datasets import IGNORE_INDEX, SemanticKITTI, VoxelConfig, collate
from .nn import SparseConv3d
from .checkpoint import save as save_checkpoint
from .training import _progress, evaluate, evaluation_set, load_model, split_arg

METHODS = ("magnitude", "permute", "learned")


def _bytes(obj: object) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer().nbytes


def _counts(model: nn.Module) -> Dict[str, int]:
    params = sum(p.numel() for p in model.parameters())
    masks = [pruning.weight_mask(m) for m in model.modules() if isinstance(m, SparseConv3d)]
    zeros = sum(int((mask == 0).sum()) for mask in masks if mask is not None)
    return {"parameters": params, "nonzeros": params - zeros}


def task_loss(teacher: Optional[nn.Module], alpha: float, temperature: float) -> Callable:
    """``loss(model, inputs, labels)``: cross entropy, or with a ``teacher`` (the dense model, in eval
    mode) :func:`pruning.distillation_loss` from its logits on the same inputs."""
    cross_entropy = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    def loss(model: nn.Module, inputs, labels: torch.Tensor) -> torch.Tensor:
        logits = model(inputs)
        if teacher is None:
            return cross_entropy(logits.float(), labels)
        with torch.no_grad():
            reference = teacher(inputs)
        return pruning.distillation_loss(logits, reference, labels, alpha=alpha, temperature=temperature,
                                         ignore_index=IGNORE_INDEX)

    return loss


def mean_loss(model: nn.Module, batches: Sequence[Dict], device: str) -> Optional[float]:
    """Mean cross entropy of ``model`` in eval mode over ``batches`` (None without any): what mask
    learning minimises, on whole training scans, a steadier signal than a few validation scans."""
    if not batches:
        return None
    cross_entropy = task_loss(None, 0.0, 1.0)
    model.eval()
    with torch.no_grad():
        return sum(float(cross_entropy(model, b["input"].to(device), b["labels"].to(device)))
                   for b in batches) / len(batches)


def learn_masks(model: nn.Module, loader: DataLoader, device: str, steps: int, lr: float,
                include: Sequence[str] = ("*",), loss: Optional[Callable] = None,
                temperature: Tuple[float, float] = (2.0, 0.1), scale: float = 10.0) -> None:
    """Trains the mask logits of ``model`` (weights frozen) for ``steps`` batches with ``loss``
    (:func:`task_loss`; cross entropy by default), the Gumbel-softmax temperature annealed from
    ``temperature[0]`` to ``temperature[1]`` (:func:`pruning.annealed_temperature`; logits start at
    ``scale`` times each pattern's share of the largest kept magnitude), then hardens them."""
    logits = pruning.attach_learned_masks(model, include=include, scale=scale)
    optimizer = torch.optim.Adam(logits, lr=lr)
    loss = loss or task_loss(None, 0.0, 1.0)
    model.train()
    batches = iter(loader)
    for step in _progress(range(steps), desc="learning masks"):
        pruning.set_mask_temperature(model, pruning.annealed_temperature(step, steps, *temperature))
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss(model, batch["input"].to(device), batch["labels"].to(device)).backward()
        optimizer.step()
    pruning.finalize_learned_masks(model)


def plot_sensitivity(layers: Sequence[pruning.LayerSensitivity], chosen: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(layers)), 4))
    ax.bar(range(len(layers)), [i.drop for i in layers],
           color=["tab:green" if i.name in chosen else "tab:red" for i in layers])
    ax.set_xticks(range(len(layers)), [i.name for i in layers], rotation=90, fontsize=6)
    ax.set_ylabel("mIoU drop, points (green: pruned)")
    ax.set_title("sensitivity: one layer 2:4-pruned at a time (magnitude)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    if args.method not in METHODS:
        raise SystemExit(f"--method must be one of {METHODS}, got {args.method!r}")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise SystemExit(f"checkpoint {checkpoint} not found")
    torch.manual_seed(args.seed)  # Gumbel samples and the training order: one run, one result
    dense, config = load_model(checkpoint, args.device)
    root = args.data_root or config["data_root"]
    val = DataLoader(evaluation_set(args.eval_data_root or root, args.split, config["voxel_size"]), 1,
                     collate_fn=collate, num_workers=args.workers)
    train = DataLoader(SemanticKITTI(root, split_arg(args.train_split),
                                     VoxelConfig(config["voxel_size"], config.get("max_voxels"), augment=True)),
                       args.batch_size, shuffle=True, collate_fn=collate, num_workers=args.workers)
    # The same calibration batches for every model, so that differences between rows are the masks'.
    calibration = list(itertools.islice(
        DataLoader(evaluation_set(root, args.train_split, config["voxel_size"]), args.batch_size, shuffle=True,
                   collate_fn=collate, num_workers=args.workers), max(args.recalibrate, 0)))

    def recalibrated(model: nn.Module) -> nn.Module:
        if calibration:
            pruning.recalibrate_batch_norm(model, (batch["input"].to(args.device) for batch in calibration))
        return model

    rows: List[Dict[str, object]] = []
    chosen = None
    include: Sequence[str] = ("*",)
    report: Dict[str, object] = {"checkpoint": str(checkpoint), "eval_data_root": args.eval_data_root or root,
                                 "learn": {"steps": args.learn_steps, "lr": args.learn_lr,
                                           "temperature": list(args.learn_temperature), "scale": args.learn_scale},
                                 "split": args.split, "method": args.method,
                                 "recalibrate_batches": len(calibration)}
    if args.sensitivity_budget is not None:
        layers = pruning.sensitivity(
            dense, lambda m: 100 * evaluate(recalibrated(m), val, args.device).miou(present_only=True))
        include = pruning.choose_layers(layers, args.sensitivity_budget)
        print(f"{'layer':<34}{'mIoU drop (points)':>20}")
        for item in layers:
            print(f"{item.name:<34}{item.drop:>20.2f}{'  pruned' if item.name in include else ''}")
        print(f"{len(include)} of {len(layers)} layers within a budget of {args.sensitivity_budget} points")
        report["sensitivity"] = [{"layer": i.name, "drop": i.drop, "pruned": i.name in include} for i in layers]
        plot_sensitivity(layers, include, Path(args.out).with_suffix(".sensitivity.png"))

    def record(name: str, model: nn.Module) -> None:
        """Evaluates ``model``, recalibrates its batch norm in place, evaluates again, adds a row."""
        uncalibrated = evaluate(model, val, args.device).miou(present_only=True)
        matrix = evaluate(recalibrated(model), val, args.device)
        state = model.state_dict()
        rows.append({"model": name, "miou": matrix.miou(), "miou_present": matrix.miou(present_only=True),
                     "miou_present_uncalibrated": uncalibrated,
                     "train_loss": mean_loss(model, calibration, args.device),
                     **_counts(model), "checkpoint_bytes": _bytes(state),
                     "compressed_bytes": _bytes(pruning.compress_state_dict(state))})

    record("dense", dense)
    teacher = copy.deepcopy(dense).eval() if args.distill > 0 else None
    loss = task_loss(teacher, args.distill, args.distill_temperature)
    report["distill"] = {"alpha": args.distill, "temperature": args.distill_temperature}
    for method in METHODS:
        model = copy.deepcopy(dense)
        if method == "learned":
            learn_masks(model, train, args.device, args.learn_steps, args.learn_lr, include, loss,
                        tuple(args.learn_temperature), args.learn_scale)
        else:
            pruning.prune_model(model, method, include=include)
        record(method, model)
        if method == args.method:
            chosen = model
    if args.finetune_epochs > 0:
        chosen = copy.deepcopy(chosen)
        for param in chosen.parameters():
            param.requires_grad_(True)
        optimizer = torch.optim.SGD(chosen.parameters(), lr=args.finetune_lr, momentum=0.9, weight_decay=1e-4)
        batches = ((batch["input"].to(args.device), batch["labels"].to(args.device))
                   for _ in range(args.finetune_epochs) for batch in _progress(train, desc="SR-STE fine-tuning"))
        pruning.srste_finetune(chosen, batches, loss, optimizer)
        record(f"{args.method} + SR-STE", chosen)
    print(f"{'model':<20}{'mIoU':>8}{'mIoU present':>14}{'uncalibrated':>14}{'train loss':>12}{'params':>10}"
          f"{'non-zeros':>11}{'ckpt bytes':>12}{'compressed':>12}")
    for row in rows:
        loss_text = "-" if row["train_loss"] is None else f"{row['train_loss']:.3f}"
        print(f"{row['model']:<20}{100 * row['miou']:>7.1f}%{100 * row['miou_present']:>13.1f}%"
              f"{100 * row['miou_present_uncalibrated']:>13.1f}%{loss_text:>12}{row['parameters']:>10}"
              f"{row['nonzeros']:>11}{row['checkpoint_bytes']:>12}{row['compressed_bytes']:>12}")
    if calibration:
        print(f"batch-norm statistics of every model re-estimated on {len(calibration)} batches of whole "
              f"'{args.train_split}' scans ('uncalibrated': mIoU present before; 'train loss': cross entropy "
              f"on those scans)")
    out = Path(args.out)
    save_checkpoint({"model": chosen.state_dict(), "config": config, "pruning": {"method": args.method}}, out)
    out.with_suffix(".json").write_text(json.dumps({**report, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
