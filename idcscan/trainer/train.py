"""Train one network on a patient-level split (`idcscan train`), after torchvision's references.

`get_args_parser`, `main`, `train_one_epoch`, `evaluate`. A run folder holds:
`checkpoint.pt` (last epoch: weights, optimiser, schedule, scaler, history, arguments; `--resume`
continues from it), `best.pt` (the epoch with the best validation AUROC; early stopping watches
the same figure), `metrics.json` (temperature and threshold chosen on validation, figures per
split and per patient) and `predictions.npz` (validation and test logit margins and calibrated
probabilities, for curves and for re-thresholding without retraining).

With `--split cv`, "test" is the fold's held-out patients; the published test patients are in no
fold and are scored only by `idcscan compare`, once, with the model it chose.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from idcscan.core.metrics import auroc
from idcscan.core.tiles import TileSpec
from idcscan.trainer import balance
from idcscan.trainer.augment import (
    ClassificationPresetEval,
    ClassificationPresetTrain,
    training_preset,
)
from idcscan.trainer.calibration import expected_calibration_error, fit_platt, sigmoid
from idcscan.trainer.data import PatchSet, find_patients, load_patches, patient_counts
from idcscan.trainer.evaluate import (
    choose_threshold,
    json_safe,
    split_report,
    validation_weights,
)
from idcscan.trainer.models import build_model, load_pretrained
from idcscan.trainer.options import add_train_arguments
from idcscan.trainer.splits import Split, cv_split, make_split

log = logging.getLogger(__name__)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train one IDC classifier", add_help=add_help)
    add_train_arguments(parser)
    return parser


def progress_bar(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=disable,
    )


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def training_batches(
    patches: PatchSet,
    indices: np.ndarray,
    batch_size: int,
    preset: ClassificationPresetTrain,
    seed: int,
    epoch: int,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's shuffled, augmented batches; the same for the same seed and epoch (resume).

    `pin_memory` (CUDA) lets the copy to the GPU overlap with computation.
    """
    order = np.random.default_rng([seed, epoch]).permutation(indices)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    for start in range(0, len(order), batch_size):
        chosen = np.sort(order[start : start + batch_size])  # sorted: faster gather
        images = preset(patches.tiles[chosen], generator)
        labels = torch.from_numpy(patches.labels[chosen])
        yield (images.pin_memory(), labels.pin_memory()) if pin_memory else (images, labels)


def prefetch(batches: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Prepare the next batches in a thread while the model computes (torch releases the GIL)."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    done = object()

    def fill() -> None:
        try:
            for batch in batches:
                slots.put(batch)
        except BaseException as exc:  # surfaced in the consumer
            slots.put(exc)
        slots.put(done)

    thread = threading.Thread(target=fill, daemon=True)
    thread.start()
    while (item := slots.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    scaler: torch.amp.GradScaler,
    progress: Progress,
    task: Any,
) -> dict[str, float]:
    model.train()
    total_loss, seen, started = 0.0, 0, time.perf_counter()
    for images, targets in prefetch(batches):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        # Mixed precision on CUDA only: CPU autocast is slower than float32 for these convs.
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(targets)
        seen += len(targets)
        progress.update(task, advance=len(targets), status=f"loss {total_loss / seen:.4f}")
    elapsed = time.perf_counter() - started
    return {"loss": total_loss / max(seen, 1), "patches_per_s": seen / max(elapsed, 1e-9)}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    patches: PatchSet,
    preset: ClassificationPresetEval,
    device: torch.device,
    batch_size: int = 512,
    progress: Progress | None = None,
    description: str = "evaluate",
) -> np.ndarray:
    """The IDC logit margin (IDC logit minus no-IDC logit) of every patch, through the evaluation
    preset (no augmentation). `sigmoid(margin / temperature)` is the calibrated probability."""
    model.eval()
    out = np.empty(len(patches), dtype=np.float32)
    task = progress.add_task(description, total=len(patches), status="") if progress else None
    for start in range(0, len(patches), batch_size):
        images = preset(patches.tiles[start : start + batch_size]).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = model(images)
        logits = logits.float()
        out[start : start + len(images)] = (logits[:, 1] - logits[:, 0]).cpu().numpy()
        if progress is not None and task is not None:
            progress.update(task, advance=len(images))
    if progress is not None and task is not None:
        progress.remove_task(task)
    return out


def plain_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options as plain values (no handler functions), safe to store and reload."""
    return {k: v for k, v in vars(args).items() if k != "func"}


def _save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint


def resolve_split(
    args: argparse.Namespace, fold: int | None = None
) -> tuple[Split, tuple[str, ...]]:
    """The run's split, and the published test patients that `--split cv` sets aside."""
    if args.split == "cv":
        counts = patient_counts(Path(args.data))
        return cv_split(counts, args.folds, args.fold if fold is None else fold, args.seed)
    return make_split(find_patients(Path(args.data)), args.split, args.seed), ()


def main(args: argparse.Namespace, patches: PatchSet | None = None) -> dict[str, Any]:
    """Train, early-stop on validation, choose the threshold on validation, report on test.

    `patches` lets `compare` load the dataset once for every architecture.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    split, final_test = resolve_split(args)
    if patches is None:
        patches = load_patches(Path(args.data), split.train + split.val + split.test)
    train_set, val_set, test_set = (
        patches.of_patients(getattr(split, s)) for s in ("train", "val", "test")
    )
    log.info(
        "split %s: %s; patches train %s val %s test %s",
        split.method,
        split.sizes(),
        train_set.counts(),
        val_set.counts(),
        test_set.counts(),
    )

    val_weights = validation_weights(val_set.patients, args.validation_weights)
    spec = TileSpec()
    train_preset, eval_preset = training_preset(spec, args.augment), ClassificationPresetEval(spec)

    def epoch_indices(epoch: int) -> np.ndarray:
        return balance.epoch_indices(
            train_set.labels,
            args.balance,
            args.seed,
            train_set.patients,
            args.max_per_patient,
            epoch,
        )

    indices = epoch_indices(0)  # every epoch has this length (the schedule counts on it)
    weights = balance.class_weights(train_set.labels[indices], args.balance)
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else torch.from_numpy(weights))
    criterion = criterion.to(device)

    model = build_model(args.arch, args.width)
    if args.pretrained:
        load_pretrained(model, Path(args.pretrained))
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = -(-len(indices) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")

    state: dict[str, Any] = {
        "epoch": 0,
        "best_auroc": -1.0,
        "best_epoch": -1,
        "stale": 0,
        "history": [],
    }
    checkpoint_path, best_path = out / "checkpoint.pt", out / "best.pt"
    if args.resume and checkpoint_path.is_file():
        checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if checkpoint["args"]["epochs"] != args.epochs:
            raise ValueError(
                f"{checkpoint_path} was made for --epochs {checkpoint['args']['epochs']};"
                " the learning-rate schedule depends on it: resume with the same value"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = checkpoint["state"]
        torch.set_rng_state(checkpoint["torch_rng"].cpu())  # map_location moved it to the device
        log.info("resumed %s at epoch %d", checkpoint_path, state["epoch"])
    (out / "args.json").write_text(json.dumps(plain_arguments(args), indent=2, default=str))

    with progress_bar(args.no_progress) as progress:
        epochs = progress.add_task(
            f"{args.arch} epochs", total=args.epochs, completed=state["epoch"], status=""
        )
        while state["epoch"] < args.epochs and not (0 < args.patience <= state["stale"]):
            epoch = state["epoch"]
            task = progress.add_task(f"epoch {epoch + 1}", total=len(indices), status="")
            batches = training_batches(
                train_set,
                epoch_indices(epoch),
                args.batch_size,
                train_preset,
                args.seed,
                epoch,
                pin_memory=device.type == "cuda",
            )
            figures = train_one_epoch(
                model, criterion, optimizer, scheduler, batches, device, scaler, progress, task
            )
            progress.remove_task(task)
            val_margins = evaluate(
                model, val_set, eval_preset, device, progress=progress, description="validation"
            )
            figures["val_auroc"] = auroc(val_set.labels, val_margins, val_weights)
            state["history"].append({"epoch": epoch + 1, **figures})
            state["epoch"] = epoch + 1
            if figures["val_auroc"] > state["best_auroc"]:
                state.update(best_auroc=figures["val_auroc"], best_epoch=epoch + 1, stale=0)
                _save(
                    {
                        "model": model.state_dict(),
                        "epoch": epoch + 1,
                        "args": plain_arguments(args),
                    },
                    best_path,
                )
            else:
                state["stale"] += 1
            _save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "state": state,
                    "torch_rng": torch.get_rng_state(),
                    "args": plain_arguments(args),
                },
                checkpoint_path,
            )
            log.info(
                "%s epoch %d: loss %.4f, %.0f patches/s, val AUROC %.4f",
                args.arch,
                epoch + 1,
                figures["loss"],
                figures["patches_per_s"],
                figures["val_auroc"],
            )
            progress.update(
                epochs,
                completed=state["epoch"],
                status=f"val AUROC {figures['val_auroc']:.4f} (best {state['best_auroc']:.4f})",
            )

        model.load_state_dict(
            torch.load(best_path, map_location=device, weights_only=True)["model"]
        )
        val_margins = evaluate(
            model, val_set, eval_preset, device, progress=progress, description="validation"
        )
        # Calibrate first, then threshold the calibrated probabilities (the order the ONNX
        # graph applies them in); both are fitted on validation alone.
        temperature, bias = fit_platt(val_set.labels, val_margins, val_weights)
        val_probabilities = sigmoid(val_margins / temperature + bias)
        threshold = choose_threshold(
            val_set.labels,
            val_probabilities,
            args.threshold_rule,
            args.min_sensitivity,
            val_weights,
        )
        # The test patients are scored once, with the model and threshold fixed on validation.
        test_margins = evaluate(
            model, test_set, eval_preset, device, progress=progress, description="test"
        )
        test_probabilities = sigmoid(test_margins / temperature + bias)

    metrics = json_safe(
        {
            "arch": args.arch,
            "width": args.width,
            "balance": args.balance,
            "augment": args.augment,
            "max_per_patient": args.max_per_patient,
            "temperature": temperature,
            "calibration_bias": bias,
            "calibration": {
                split_name: {
                    "ece_before": expected_calibration_error(labels, sigmoid(margins)),
                    "ece_after": expected_calibration_error(
                        labels, sigmoid(margins / temperature + bias)
                    ),
                }
                for split_name, labels, margins in (
                    ("val", val_set.labels, val_margins),
                    ("test", test_set.labels, test_margins),
                )
            },
            "threshold": threshold,
            "threshold_rule": args.threshold_rule,
            "min_sensitivity": args.min_sensitivity
            if args.threshold_rule == "sensitivity"
            else None,
            "validation_weights": args.validation_weights,
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "split": {**split.as_dict(), "set_aside_test": list(final_test)},
            "spec": asdict(spec),
            "data": {
                "root": str(args.data),
                "train": train_set.counts(),
                "val": val_set.counts(),
                "test": test_set.counts(),
                "padded_patches": patches.padded,
            },
            "train_patches_per_epoch": len(indices),
            "history": state["history"],
            "val": split_report(val_set.labels, val_probabilities, val_set.patients, threshold),
            "test": split_report(test_set.labels, test_probabilities, test_set.patients, threshold),
        }
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    np.savez_compressed(
        out / "predictions.npz",
        val_labels=val_set.labels,
        val_probabilities=val_probabilities,
        val_margins=val_margins,
        val_patients=val_set.patients,
        test_labels=test_set.labels,
        test_probabilities=test_probabilities,
        test_margins=test_margins,
        test_patients=test_set.patients,
    )
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
