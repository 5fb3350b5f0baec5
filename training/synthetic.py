"""A tiny, clearly separable ImageFolder dataset, for trying the pipeline without real data.

Each class is a base colour; every image is that colour at a random brightness with pixel
noise, so a ResNet learns it in an epoch or two on a CPU. The tests train on it, and
`python -m training.synthetic DIR` writes one for a first run of `python -m training`.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

CLASS_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("001.red", (210, 40, 40)),
    ("002.green", (40, 180, 60)),
    ("003.blue", (40, 60, 210)),
    ("004.yellow", (220, 210, 40)),
    ("005.magenta", (200, 40, 200)),
    ("006.cyan", (40, 200, 210)),
)
NOISE = 30


def class_names(classes: int) -> tuple[str, ...]:
    if not 2 <= classes <= len(CLASS_COLOURS):
        raise ValueError(f"classes must be between 2 and {len(CLASS_COLOURS)}, not {classes}")
    return tuple(name for name, _ in CLASS_COLOURS[:classes])


def make_image(label: int, rng: random.Random, size: int = 48) -> Image.Image:
    """One RGB image of class `label`: its colour scaled by 0.7-1.2, plus uniform noise per pixel."""
    scale = rng.uniform(0.7, 1.2)
    base = [channel * scale for channel in CLASS_COLOURS[label][1]]
    noise = rng.randbytes(size * size * 3)
    pixels = bytes(
        max(0, min(255, int(base[i % 3] + (noise[i] - 128) * NOISE / 128))) for i in range(size * size * 3)
    )
    return Image.frombytes("RGB", (size, size), pixels)


def make_dataset(root: Path, *, classes: int = 3, train_per_class: int = 24, eval_per_class: int = 6,
                 size: int = 48, seed: int = 0) -> tuple[str, ...]:
    """Write `root/{train,valid,test}/<class>/<n>.png`; returns the class names in index order."""
    names = class_names(classes)
    rng = random.Random(seed)
    for split, count in (("train", train_per_class), ("valid", eval_per_class), ("test", eval_per_class)):
        for label, name in enumerate(names):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                make_image(label, rng, size).save(folder / f"{index:03d}.png")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synthetic",
                                     description="Write a tiny separable ImageFolder dataset (coloured noise).")
    parser.add_argument("root", type=Path, help="directory to create train/, valid/ and test/ in")
    parser.add_argument("--classes", type=int, default=3, help=f"2-{len(CLASS_COLOURS)} (default: 3)")
    parser.add_argument("--train-per-class", type=int, default=24, help="default: 24")
    parser.add_argument("--eval-per-class", type=int, default=6, help="valid and test images per class (default: 6)")
    parser.add_argument("--size", type=int, default=48, help="image edge in pixels (default: 48)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        names = make_dataset(args.root, classes=args.classes, train_per_class=args.train_per_class,
                             eval_per_class=args.eval_per_class, size=args.size, seed=args.seed)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(names)} classes to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
