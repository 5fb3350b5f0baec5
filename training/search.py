"""`--search N`: random search over learning rate and batch size, best trial kept.

What SageMaker's hyperparameter tuner did for the original project, without SageMaker: N short
runs, each with a learning rate drawn log-uniformly within a factor of ten of `--lr` and a
batch size of half, equal or twice `--batch-size`, ranked by their best validation loss.
The draw uses `--seed`, so every process of a distributed run picks the same trials.
"""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import dataclass, replace
from typing import Any

from training.checkpoint import CLASS_NAMES_FILE, METRICS_FILE, MODEL_FILE, write_json
from training.data import ImageTree
from training.distributed import Context
from training.exceptions import ConfigError
from training.loop import Log, RunResult, TrainConfig, fit

TRIALS_DIR = "trials"
LR_SPREAD = 10.0


@dataclass(frozen=True)
class Trial:
    number: int
    lr: float
    batch_size: int


def sample_trials(count: int, base_lr: float, base_batch: int, seed: int, world_size: int = 1) -> list[Trial]:
    """`count` (lr, batch) pairs; batch sizes stay divisible by the number of processes."""
    if count < 1:
        raise ConfigError(f"--search needs at least one trial, not {count}")
    batches = sorted({b for b in (base_batch // 2, base_batch, base_batch * 2) if b >= world_size and b % world_size == 0})
    if not batches:
        raise ConfigError(f"--batch-size {base_batch} leaves no batch size divisible by {world_size} processes")
    rng = random.Random(seed)
    low, high = math.log10(base_lr / LR_SPREAD), math.log10(base_lr * LR_SPREAD)
    return [Trial(number=i, lr=float(f"{10 ** rng.uniform(low, high):.3g}"), batch_size=rng.choice(batches))
            for i in range(1, count + 1)]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The results as an aligned text table, best (lowest val_loss) first."""
    header = ("trial", "lr", "batch", "epochs", "val_loss", "val_acc", "test_acc", "seconds")
    lines = [header]
    for row in sorted(rows, key=_rank):
        test = row["test_accuracy"]
        lines.append((str(row["trial"]), f"{row['lr']:.3g}", str(row["batch_size"]), str(row["epochs_completed"]),
                      f"{row['val_loss']:.4f}", f"{row['val_accuracy']:.3f}",
                      "-" if test is None else f"{test:.3f}", f"{row['train_seconds']:.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _rank(row: dict[str, Any]) -> tuple[float, int]:
    loss = row["val_loss"]
    return (math.inf if loss is None or math.isnan(loss) else loss, row["trial"])


def _prefixed(log: Log, prefix: str) -> Log:
    def prefixed_log(line: str) -> None:
        log(prefix + line)

    return prefixed_log


def run_search(config: TrainConfig, tree: ImageTree, ctx: Context, log: Log, count: int) -> RunResult:
    """Run the trials under `--out/trials/`, then make the best one the run's output."""
    if config.resume:
        raise ConfigError("--resume continues one run; it cannot be combined with --search")
    trials = sample_trials(count, config.lr, config.batch_size, config.seed, ctx.world_size)
    rows: list[dict[str, Any]] = []
    results: dict[int, RunResult] = {}
    for trial in trials:
        log(f"trial {trial.number}/{count}: lr {trial.lr:g}, batch {trial.batch_size}")
        trial_config = replace(config, lr=trial.lr, batch_size=trial.batch_size,
                               out=config.out / TRIALS_DIR / f"trial-{trial.number:02d}", checkpoint_dir=None)
        result = fit(trial_config, tree, ctx, _prefixed(log, f"[trial {trial.number}] "))
        results[trial.number] = result
        rows.append({"trial": trial.number, "lr": trial.lr, "batch_size": trial.batch_size,
                     **{k: result.metrics[k] for k in ("epochs_completed", "val_loss", "val_accuracy",
                                                       "test_accuracy", "train_seconds")}})
    best_row = min(rows, key=_rank)
    best = results[best_row["trial"]]
    log("search results (best first):\n" + format_table(rows))
    log(f"best: trial {best_row['trial']} (lr {best_row['lr']:g}, batch {best_row['batch_size']})")
    metrics = {**best.metrics, "search": {"best_trial": best_row["trial"], "trials": rows}}
    if ctx.is_main:
        source = config.out / TRIALS_DIR / f"trial-{best_row['trial']:02d}"
        for name in (MODEL_FILE, CLASS_NAMES_FILE):
            shutil.copyfile(source / name, config.out / name)
        write_json(config.out / METRICS_FILE, metrics)
    return RunResult(metrics=metrics, state_dict=best.state_dict)
