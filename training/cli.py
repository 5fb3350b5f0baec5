"""`python -m training`: the command line, for one process or under torchrun.

The flags are checked before anything is trained (a bad `--version` found after three hours of
training would be a waste); failures print one line and exit 1. Only rank 0 prints progress and
publishes; the other processes train in step with it and exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from model_store.exceptions import ModelStoreError
from model_store.manifest import Preprocessing, check_name
from model_store.publish import publish_state_dict
from model_store.store import manifest_key, open_store
from training.checkpoint import checkpoint_path
from training.data import discover
from training.distributed import DEVICES, Context, all_reduce_sums, setup, teardown
from training.exceptions import ConfigError, TrainingError
from training.loop import Log, RunResult, TrainConfig, fit
from training.model import parse_architecture
from training.search import run_search

EXAMPLES = """\
examples:
  python -m training --data dogImages --arch resnet50 --head-hidden 128 --pretrained resnet50.pth \\
      --freeze-backbone --epochs 5 --out runs/r50
  torchrun --nproc_per_node 4 -m training --data dogImages --epochs 10 --batch-size 128 --out runs/ddp \\
      --publish s3://my-bucket/models --name dogbreeds --version v2 --alias live
  python -m training --data dogImages --epochs 2 --search 8 --out runs/search
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Fine-tune a ResNet on an ImageFolder tree (train/ valid/ [test/]) on CPU, one GPU or "
                    "many (torchrun, DDP), and optionally publish it to a breedserve model store.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", type=Path, default=_env_path("SM_CHANNEL_TRAINING"),
                      required="SM_CHANNEL_TRAINING" not in os.environ,
                      help="ImageFolder root with train/, valid/ and test/ (default in SageMaker: the "
                           "'training' channel)")
    data.add_argument("--out", type=Path, default=_env_path("SM_MODEL_DIR"), required="SM_MODEL_DIR" not in os.environ,
                      help="output directory: model.safetensors, metrics.json, class_names.txt, checkpoints/ "
                           "(default in SageMaker: the model directory)")
    data.add_argument("--arch", default="resnet50", help="resnet18|34|50|101|152 (default: resnet50)")
    data.add_argument("--head-hidden", type=int, metavar="N",
                      help="classifier head Linear(features, N), ReLU, Linear(N, classes); default one Linear")
    data.add_argument("--pretrained", type=Path, metavar="FILE",
                      help="local weights for the backbone (.pth, .safetensors or SageMaker model.tar.gz); "
                           "nothing is downloaded")
    data.add_argument("--freeze-backbone", type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL",
                      help="train only the head (default: full fine-tune)")
    data.add_argument("--preprocess", default="resize224",
                      help="resize224 (default, as the original training), imagenet, or a JSON file "
                           "with a model_store Preprocessing; evaluation uses exactly what serving uses")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=10, help="total epochs (default: 10)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 0.001)")
    train.add_argument("--batch-size", type=int, default=32,
                       help="global batch size, split evenly across processes (default: 32)")
    train.add_argument("--patience", type=int, default=5,
                       help="stop after N epochs without a lower val loss; 0 = never (default: 5)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--workers", type=int, help="data loader processes per training process (default: auto)")
    train.add_argument("--resume", type=parse_resume, nargs="?", const=True, default=False, metavar="auto",
                       help="continue from the last checkpoint; 'auto': if there is one, else start "
                            "(for restarted spot jobs)")
    train.add_argument("--checkpoint-dir", type=Path, metavar="DIR",
                       help="where checkpoints go (default: OUT/checkpoints; in SageMaker use /opt/ml/checkpoints)")
    train.add_argument("--search", type=int, default=0, metavar="N",
                       help="random search: N trials over lr and batch size, each --epochs long; best kept")
    train.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                       help="mixed precision: auto = on GPU only (default)")
    train.add_argument("--device", choices=DEVICES, default="auto", help="default: GPU if available")
    pub = parser.add_argument_group("publishing")
    pub.add_argument("--publish", metavar="STORE_URI", help="model store to publish to: file:///dir or s3://bucket/prefix")
    pub.add_argument("--name", help="model name in the store")
    pub.add_argument("--version", help="new version to create")
    pub.add_argument("--alias", help="also point this alias (e.g. live) at the new version")
    return parser


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def parse_bool(value: str) -> bool:
    """`--flag`, `--flag true` and `--flag false` all work: SageMaker passes every hyperparameter a value."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def parse_resume(value: str) -> bool | str:
    """`--resume [true|false|auto]`; `auto` is decided once the checkpoint directory is known."""
    return "auto" if value.strip().lower() == "auto" else parse_bool(value)


def read_preprocess(value: str) -> Preprocessing:
    """A preset name or a JSON file holding a `Preprocessing` (e.g. 64x64 for quick experiments)."""
    if value in ("resize224", "imagenet"):
        return Preprocessing.preset(value)
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"--preprocess {value!r}: expected resize224, imagenet or an existing JSON file")
    try:
        return Preprocessing.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, ModelStoreError) as exc:
        raise ConfigError(f"--preprocess {path}: {exc}") from exc


def default_workers(local_world_size: int) -> int:
    """Leave one core per process for the training step itself."""
    return max(0, min(4, (os.cpu_count() or 1) // max(local_world_size, 1) - 1))


def make_config(args: argparse.Namespace, ctx: Context) -> TrainConfig:
    """The flags as a TrainConfig, with every mistake that needs no data reported before training."""
    if args.pretrained is not None and not args.pretrained.is_file():
        raise ConfigError(f"--pretrained {args.pretrained} does not exist")
    if args.workers is not None and args.workers < 0:
        raise ConfigError("--workers cannot be negative")
    if args.patience < 0:
        raise ConfigError("--patience cannot be negative")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be positive, not {args.lr}")
    config = TrainConfig(
        arch=parse_architecture(args.arch, args.head_hidden), preprocess=read_preprocess(args.preprocess),
        out=args.out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        freeze_backbone=args.freeze_backbone, pretrained=args.pretrained,
        workers=default_workers(ctx.local_world_size) if args.workers is None else args.workers,
        seed=args.seed, patience=args.patience, amp=args.amp, checkpoint_dir=args.checkpoint_dir)
    if args.resume == "auto":
        return replace(config, resume=_checkpoint_seen_by_all(checkpoint_path(config.checkpoints), ctx))
    return replace(config, resume=bool(args.resume))


def _checkpoint_seen_by_all(path: Path, ctx: Context) -> bool:
    """`--resume auto`: every process must take the same decision, or they would train different epochs."""
    seen = int(all_reduce_sums([1.0 if path.is_file() else 0.0], ctx)[0])
    if 0 < seen < ctx.world_size:
        raise ConfigError(f"--resume auto: only {seen} of {ctx.world_size} processes see {path}; "
                          "put --checkpoint-dir on storage every node can read")
    return seen == ctx.world_size


def check_publish_target(args: argparse.Namespace) -> None:
    """Fail before training if publishing would fail after it."""
    if not args.publish:
        if args.name or args.version or args.alias:
            raise ConfigError("--name/--version/--alias only make sense with --publish STORE_URI")
        return
    if not args.name or not args.version:
        raise ConfigError("--publish needs --name and --version")
    try:
        check_name("name", args.name)
        check_name("version", args.version)
        if args.alias:
            check_name("alias", args.alias)
        if open_store(args.publish).exists(manifest_key(args.name, args.version)):
            raise ConfigError(f"{args.name} version {args.version} already exists in {args.publish}: "
                              "choose a new --version")
    except ModelStoreError as exc:
        raise ConfigError(f"--publish: {exc}") from exc


def publish(result: RunResult, config: TrainConfig, args: argparse.Namespace, class_names: tuple[str, ...],
            log: Log) -> None:
    """Hand the best weights to the model store with the manifest serving needs."""
    _show_store_steps()
    m = result.metrics
    metrics = {"test_accuracy": m["test_accuracy"], "test_loss": m["test_loss"], "val_loss": m["val_loss"],
               "val_accuracy": m["val_accuracy"], "epochs": m["epochs_completed"], "best_epoch": m["best_epoch"],
               "train_images": m["dataset"]["train"], "lr": m["hyperparameters"]["lr"],
               "batch_size": m["hyperparameters"]["batch_size"], "world_size": m["world_size"]}
    manifest = publish_state_dict(
        result.state_dict, args.publish, args.name, args.version, arch=config.arch, class_names=class_names,
        preprocess=config.preprocess, trained=True, metrics=metrics, alias=args.alias,
        source=f"python -m training --data {args.data} ({config.arch.label}, {m['epochs_completed']} epochs)")
    log(f"published {manifest.name} version {manifest.version} to {args.publish}"
        f"{f' (alias {args.alias})' if args.alias else ''}")


def _show_store_steps() -> None:
    """The model store reports its publish steps through logging; show them like our own lines."""
    logger = logging.getLogger("model_store")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx: Context | None = None
    try:
        ctx = setup(args.device)
        is_main = ctx.is_main

        def log(line: str) -> None:
            if is_main:
                print(line, flush=True)

        config = make_config(args, ctx)
        if ctx.is_main:
            check_publish_target(args)
        tree = discover(args.data)
        if args.search:
            result = run_search(config, tree, ctx, log, args.search)
        else:
            result = fit(config, tree, ctx, log)
        if ctx.is_main:
            log(f"wrote {config.out}/model.safetensors, metrics.json, class_names.txt")
            if args.publish:
                publish(result, config, args, tree.class_names, log)
        return 0
    except (TrainingError, ModelStoreError) as exc:
        where = f"[rank {ctx.rank}] " if ctx is not None and ctx.distributed else ""
        print(f"error: {where}{_one_line(exc)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted (resume with --resume)", file=sys.stderr)
        return 130
    finally:
        if ctx is not None:
            teardown(ctx)


def _one_line(exc: BaseException) -> str:
    """Errors raised inside a DataLoader worker arrive wrapped with a traceback: keep its last line."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if len(lines) > 1 and lines[0].startswith("Caught ") else (lines[0] if lines else
                                                                                          type(exc).__name__)
