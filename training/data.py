"""The ImageFolder tree (`train/`, `valid/`, `test/`) as datasets and loaders.

Class index i is the i-th class folder name in sorted order, as torchvision's `ImageFolder`
and the original dogImages training did; every split must list the same folders, otherwise
the indices would silently mean different breeds. Evaluation turns images into tensors with
`model_store.preprocess.to_tensor`, the function serving uses; training only adds a random
horizontal flip before it, so the model sees the same resize, crop and normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from model_store.manifest import Preprocessing
from model_store.preprocess import to_tensor
from training.exceptions import DatasetError

SPLITS = ("train", "valid", "test")
REQUIRED_SPLITS = ("train", "valid")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})

Sample = tuple[Path, int]


@dataclass(frozen=True)
class ImageTree:
    """The class names and the (path, label) samples of each split present."""

    root: Path
    class_names: tuple[str, ...]
    splits: dict[str, list[Sample]]

    def size(self, split: str) -> int:
        return len(self.splits.get(split, []))


def class_folders(split_dir: Path) -> tuple[str, ...]:
    """Sorted names of the sub-folders of one split (hidden folders ignored)."""
    return tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))


def discover(root: Path) -> ImageTree:
    """Read the tree under `root`; `test/` is optional, `train/` and `valid/` are not."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data {root} is not a directory")
    present = [s for s in SPLITS if (root / s).is_dir()]
    missing = [s for s in REQUIRED_SPLITS if s not in present]
    if missing:
        raise DatasetError(f"--data {root} has no {' or '.join(m + '/' for m in missing)} folder "
                           "(expected an ImageFolder tree with train/, valid/ and optionally test/)")
    names = {split: class_folders(root / split) for split in present}
    class_names = names["train"]
    if not class_names:
        raise DatasetError(f"{root / 'train'} has no class folders")
    for split, split_names in names.items():
        if split_names != class_names:
            only_here = sorted(set(split_names) - set(class_names))
            absent = sorted(set(class_names) - set(split_names))
            raise DatasetError(
                f"{split}/ and train/ list different classes: only in {split}/: {_short(only_here)}; "
                f"missing from {split}/: {_short(absent)} (every split needs the same class folders)"
            )
    splits = {split: _samples(root / split, class_names) for split in present}
    for split in REQUIRED_SPLITS:
        if not splits[split]:
            raise DatasetError(f"{root / split} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageTree(root=root, class_names=class_names, splits=splits)


def _samples(split_dir: Path, class_names: tuple[str, ...]) -> list[Sample]:
    samples: list[Sample] = []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (split_dir / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        samples.extend((path, label) for path in files)
    return samples


def _short(items: list[str], limit: int = 5) -> str:
    if not items:
        return "none"
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def load_rgb(path: Path) -> Image.Image:
    """Open an image file as RGB; a broken file names itself instead of failing deep in a worker."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


class EvalTransform:
    """Exactly what serving does: `to_tensor(image, spec)`."""

    def __init__(self, spec: Preprocessing) -> None:
        self.spec = spec

    def __call__(self, image: Image.Image) -> Tensor:
        return to_tensor(image, self.spec)


class TrainTransform(EvalTransform):
    """A random horizontal flip, then the serving transform (a flipped dog is the same breed)."""

    def __call__(self, image: Image.Image) -> Tensor:
        if torch.rand(()) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(image, self.spec)


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """(path, label) samples read lazily and transformed (a plain class so workers can pickle it)."""

    def __init__(self, samples: list[Sample], transform: EvalTransform) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


def shard(length: int, rank: int, world_size: int) -> list[int]:
    """Indices rank, rank + world, ...: evaluation shards without DistributedSampler's padding,
    so summed metrics count every image exactly once."""
    return list(range(rank, length, world_size))


@dataclass(frozen=True)
class Loaders:
    train: DataLoader
    train_sampler: DistributedSampler
    valid: DataLoader
    test: DataLoader | None


def make_loaders(tree: ImageTree, spec: Preprocessing, *, batch_size: int, workers: int, rank: int,
                 world_size: int, seed: int, pin_memory: bool = False) -> Loaders:
    """Loaders for one process. `batch_size` is per process.

    Training always goes through a DistributedSampler (with one replica when alone), so the
    shuffle order depends only on (seed, epoch): a resumed run sees the same order it would have.
    """
    train_set = ImageDataset(tree.splits["train"], TrainTransform(spec))
    sampler: DistributedSampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank,
                                                     shuffle=True, seed=seed, drop_last=False)

    def loader(dataset: Dataset[tuple[Tensor, int]], train_sampler: DistributedSampler | None = None) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=train_sampler, shuffle=False,
                          num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)

    def evaluation(split: str) -> DataLoader:
        dataset = ImageDataset(tree.splits[split], EvalTransform(spec))
        return loader(Subset(dataset, shard(len(dataset), rank, world_size)))

    test = evaluation("test") if tree.size("test") else None
    return Loaders(train=loader(train_set, sampler), train_sampler=sampler, valid=evaluation("valid"), test=test)
