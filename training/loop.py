"""One training run: epochs of train + validate, checkpoint, early stopping, test, outputs.

Every process runs this; only the main one writes. Validation loss decides both which
weights are kept (the best epoch's) and when to stop (`patience` epochs without improvement).
A checkpoint is written after every epoch, so `resume` continues at the next one with the
same optimizer state, history, patience counter and random generators.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model_store.manifest import Architecture, Preprocessing
from training.checkpoint import (
    CHECKPOINT_DIR,
    best_weights_path,
    capture_rng,
    checkpoint_path,
    load_checkpoint,
    load_weights,
    restore_rng,
    save_checkpoint,
    save_weights,
    write_outputs,
)
from training.data import ImageTree, make_loaders
from training.distributed import Context, all_reduce_sums, per_process_batch
from training.exceptions import CheckpointError, ConfigError, TrainingError
from training.model import create_model, freeze_backbone, set_train_mode

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run (the CLI flags after validation)."""

    arch: Architecture
    preprocess: Preprocessing
    out: Path
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    freeze_backbone: bool = False
    pretrained: Path | None = None
    workers: int = 0
    seed: int = 0
    patience: int = 5
    amp: str = "auto"
    resume: bool = False
    checkpoint_dir: Path | None = None

    @property
    def checkpoints(self) -> Path:
        """Where checkpoints go: `--checkpoint-dir`, else `--out/checkpoints`."""
        return self.checkpoint_dir or self.out / CHECKPOINT_DIR

    def hyperparameters(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "freeze_backbone": self.freeze_backbone,
                "pretrained": str(self.pretrained) if self.pretrained else None,
                "seed": self.seed, "patience": self.patience}


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    seconds: float


@dataclass
class RunResult:
    """What a finished run reports (also the body of metrics.json)."""

    metrics: dict[str, Any]
    state_dict: dict[str, Tensor] = field(repr=False)

    @property
    def best_val_loss(self) -> float:
        return float(self.metrics["val_loss"])


@dataclass
class _Progress:
    """The resumable part of a run besides model and optimizer."""

    epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[EpochStats] = field(default_factory=list)


def use_amp(choice: str, device: torch.device) -> bool:
    """Mixed precision only on GPU: float16 autocast gains nothing on CPU and changes results."""
    if choice == "off":
        return False
    if choice == "on" and device.type != "cuda":
        raise ConfigError("--amp on needs a CUDA GPU; use --amp auto (mixed precision on GPU only) or off")
    if choice not in ("auto", "on"):
        raise ConfigError(f"--amp {choice!r}: expected auto, on or off")
    return device.type == "cuda"


def fit(config: TrainConfig, tree: ImageTree, ctx: Context, log: Log) -> RunResult:
    """Train, keep the best-validation weights, test them, and (main process) write the outputs."""
    if config.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, not {config.epochs}")
    amp = use_amp(config.amp, ctx.device)
    batch = per_process_batch(config.batch_size, ctx.world_size)
    torch.manual_seed(config.seed)  # identical initial weights in every process
    model, origin = create_model(config.arch, len(tree.class_names), config.pretrained)
    if config.freeze_backbone:
        freeze_backbone(model)
    model.to(ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    log(f"{config.arch.label} ({origin}), {len(tree.class_names)} classes, "
        f"{tree.size('train')} train / {tree.size('valid')} valid / {tree.size('test')} test images, "
        f"{ctx.world_size} process(es) on {ctx.device.type}, batch {config.batch_size}, lr {config.lr:g}"
        f"{', mixed precision' if amp else ''}{', frozen backbone' if config.freeze_backbone else ''}")
    progress = _Progress()
    if config.resume:
        progress = _restore(config, tree, model, optimizer, scaler, ctx)
        log(f"resuming after epoch {progress.epoch} (best val_loss {progress.best_val_loss:.4f} "
            f"at epoch {progress.best_epoch})")
    else:
        torch.manual_seed(config.seed + ctx.rank)  # different flips per process
    best_state = _best_state(config, model, progress)
    wrapped: nn.Module = model
    if ctx.distributed:
        wrapped = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    loaders = make_loaders(tree, config.preprocess, batch_size=batch, workers=config.workers, rank=ctx.rank,
                           world_size=ctx.world_size, seed=config.seed, pin_memory=ctx.device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    stopped_early = _out_of_patience(config, progress) and progress.epoch < config.epochs
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        if stopped_early:
            break
        started = time.monotonic()
        loaders.train_sampler.set_epoch(epoch)
        train_loss = _train_epoch(wrapped, loaders.train, optimizer, scaler, loss_fn, ctx, amp,
                                  config.freeze_backbone)
        val_loss, val_acc = evaluate(model, loaders.valid, ctx, amp)
        stats = EpochStats(epoch, train_loss, val_loss, val_acc, round(time.monotonic() - started, 3))
        progress.history.append(stats)
        improved = val_loss < progress.best_val_loss
        if improved:
            progress.best_val_loss, progress.best_epoch, progress.bad_epochs = val_loss, epoch, 0
            best_state = _cpu_copy(model.state_dict())
        else:
            progress.bad_epochs += 1
        progress.epoch = epoch
        if ctx.is_main:
            if improved:
                save_weights(best_state, best_weights_path(config.checkpoints))
            state = _checkpoint_state(config, tree, model, optimizer, scaler, progress)
            save_checkpoint(checkpoint_path(config.checkpoints), state)
        log(f"epoch {epoch}/{config.epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
            f"val_acc {val_acc:.3f}  {stats.seconds:.1f}s{'  *best' if improved else ''}")
        stopped_early = _out_of_patience(config, progress) and epoch < config.epochs
    if stopped_early:
        log(f"early stop: val_loss has not improved for {progress.bad_epochs} epochs (--patience {config.patience})")
    if not progress.best_epoch:
        raise TrainingError("validation loss was never finite (training diverged): try a lower --lr")
    model.load_state_dict(best_state)
    test_loss, test_acc = evaluate(model, loaders.test, ctx, amp) if loaders.test is not None else (None, None)
    metrics = _metrics(config, tree, ctx, amp, progress, stopped_early, test_loss, test_acc)
    test_text = f"test_acc {test_acc:.3f}" if test_acc is not None else "no test/ split"
    log(f"best epoch {progress.best_epoch}: val_loss {progress.best_val_loss:.4f}  "
        f"val_acc {metrics['val_accuracy']:.3f}  {test_text}")
    if ctx.is_main:
        write_outputs(config.out, best_state, metrics, tree.class_names)
    return RunResult(metrics=metrics, state_dict=best_state)


def _metrics(config: TrainConfig, tree: ImageTree, ctx: Context, amp: bool, progress: _Progress,
             stopped_early: bool, test_loss: float | None, test_acc: float | None) -> dict[str, Any]:
    """The run's summary (metrics.json): same keys whatever the number of processes."""
    best = next(s for s in progress.history if s.epoch == progress.best_epoch)
    return {
        "arch": config.arch.label,
        "head": asdict(config.arch.head),
        "num_classes": len(tree.class_names),
        "preprocess": _preprocess_dict(config.preprocess),
        "hyperparameters": config.hyperparameters(),
        "world_size": ctx.world_size,
        "device": ctx.device.type,
        "amp": amp,
        "dataset": {split: tree.size(split) for split in ("train", "valid", "test")},
        "epochs_completed": progress.epoch,
        "best_epoch": progress.best_epoch,
        "stopped_early": stopped_early,
        "val_loss": progress.best_val_loss,
        "val_accuracy": best.val_accuracy,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "train_seconds": round(sum(s.seconds for s in progress.history), 3),
        "history": [asdict(s) for s in progress.history],
    }


def _train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, loss_fn: nn.Module, ctx: Context, amp: bool,
                 frozen_backbone: bool) -> float:
    """One pass over this process's share of train/; returns the mean loss over all processes."""
    set_train_mode(model, frozen_backbone)
    loss_sum, count = 0.0, 0
    for images, labels in loader:
        images = images.to(ctx.device, non_blocking=True)
        labels = labels.to(ctx.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(images), labels)
        # the loss is summed for exact reporting; the step uses the mean, as usual
        scaler.scale(loss / labels.numel()).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += float(loss.detach())
        count += labels.numel()
    total_loss, total_count = all_reduce_sums([loss_sum, count], ctx)
    return total_loss / max(total_count, 1.0)


def evaluate(model: nn.Module, loader: DataLoader, ctx: Context, amp: bool) -> tuple[float, float]:
    """(mean loss, accuracy) over the whole split, each process scoring its own shard."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for images, labels in loader:
            images = images.to(ctx.device, non_blocking=True)
            labels = labels.to(ctx.device, non_blocking=True)
            with torch.autocast(device_type=ctx.device.type, dtype=torch.float16, enabled=amp):
                logits = model(images)
            loss_sum += float(loss_fn(logits.float(), labels))
            correct += int((logits.argmax(dim=1) == labels).sum())
            count += labels.numel()
    total_loss, total_correct, total = all_reduce_sums([loss_sum, correct, count], ctx)
    if total == 0:
        return math.nan, math.nan
    return total_loss / total, total_correct / total


def _out_of_patience(config: TrainConfig, progress: _Progress) -> bool:
    """`patience` epochs in a row without a better validation loss (0 turns early stopping off)."""
    return bool(config.patience) and progress.bad_epochs >= config.patience


def _cpu_copy(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


def _preprocess_dict(spec: Preprocessing) -> dict[str, Any]:
    data = asdict(spec)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def _identity(config: TrainConfig, tree: ImageTree) -> dict[str, Any]:
    """What must not change between a checkpoint and the run resuming from it."""
    return {"arch": config.arch.label, "head": asdict(config.arch.head), "class_names": list(tree.class_names),
            "preprocess": _preprocess_dict(config.preprocess), "freeze_backbone": config.freeze_backbone}


def _checkpoint_state(config: TrainConfig, tree: ImageTree, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, progress: _Progress) -> dict[str, Any]:
    return {
        "identity": _identity(config, tree),
        "model": _cpu_copy(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": progress.epoch,
        "best_val_loss": progress.best_val_loss,
        "best_epoch": progress.best_epoch,
        "bad_epochs": progress.bad_epochs,
        "history": [asdict(s) for s in progress.history],
        "rng": capture_rng(),
    }


def _restore(config: TrainConfig, tree: ImageTree, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, ctx: Context) -> _Progress:
    path = checkpoint_path(config.checkpoints)
    state = load_checkpoint(path)
    expected, found = _identity(config, tree), state.get("identity", {})
    differing = sorted(k for k in expected if found.get(k) != expected[k])
    if differing:
        raise CheckpointError(f"{path} is from a different run: {', '.join(differing)} differ; "
                              "use the same flags and data, or a new --out")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        progress = _Progress(epoch=int(state["epoch"]), best_val_loss=float(state["best_val_loss"]),
                             best_epoch=int(state["best_epoch"]), bad_epochs=int(state["bad_epochs"]),
                             history=[EpochStats(**s) for s in state["history"]])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is incomplete or damaged: {type(exc).__name__}: {exc}") from exc
    # the optimizer state was loaded on the CPU; move it beside the parameters
    for param_state in optimizer.state.values():
        for key, value in param_state.items():
            if isinstance(value, Tensor) and key != "step":
                param_state[key] = value.to(ctx.device)
    restore_rng(state["rng"])  # rank 0's generators: a resumed single process continues exactly
    if ctx.rank:
        torch.manual_seed(config.seed + ctx.rank + progress.epoch * ctx.world_size)
    return progress


def _best_state(config: TrainConfig, model: nn.Module, progress: _Progress) -> dict[str, Tensor]:
    """The best weights so far: the saved file when resuming, else the initial weights."""
    if progress.best_epoch:
        return load_weights(best_weights_path(config.checkpoints))
    return _cpu_copy(model.state_dict())

