"""The ImageFolder tree: class order, split agreement, and the serving transform used for evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from model_store.manifest import Preprocessing
from model_store.preprocess import to_tensor
from training.data import EvalTransform, TrainTransform, discover, load_rgb, make_loaders, shard
from training.exceptions import DatasetError


def write_tree(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """layout: split -> class -> number of small PNGs."""
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.new("RGB", (8 + index, 6), (index * 40, 100, 200)).save(folder / f"{index}.png")
    return root


def test_class_index_is_the_sorted_folder_order_in_every_split(tmp_path: Path) -> None:
    # GIVEN folders created out of order, with a non-image file and a hidden folder
    classes = {"002.Beagle": 2, "001.Affenpinscher": 1, "010.Pug": 1}
    write_tree(tmp_path, {"train": classes, "valid": classes, "test": classes})
    (tmp_path / "train" / "001.Affenpinscher" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".cache").mkdir()
    # WHEN the tree is read
    tree = discover(tmp_path)
    # THEN class i is the i-th sorted name and only images count
    assert tree.class_names == ("001.Affenpinscher", "002.Beagle", "010.Pug")
    assert [(p.parent.name, label) for p, label in tree.splits["train"]] == [
        ("001.Affenpinscher", 0), ("002.Beagle", 1), ("002.Beagle", 1), ("010.Pug", 2)]
    assert (tree.size("train"), tree.size("valid"), tree.size("test")) == (4, 4, 4)


def test_splits_listing_different_classes_are_refused_by_name(tmp_path: Path) -> None:
    # GIVEN a valid/ split that lacks one breed and has an extra one
    write_tree(tmp_path, {"train": {"a": 1, "b": 1}, "valid": {"a": 1, "c": 1}})
    # WHEN / THEN reading it fails, naming both differences
    with pytest.raises(DatasetError, match=r"only in valid/: c; missing from valid/: b"):
        discover(tmp_path)


def test_test_split_is_optional_but_valid_is_not(tmp_path: Path) -> None:
    # GIVEN a tree with train/ and valid/ only, and one with train/ only
    write_tree(tmp_path / "ok", {"train": {"a": 1, "b": 1}, "valid": {"a": 1, "b": 1}})
    write_tree(tmp_path / "bad", {"train": {"a": 1}})
    # WHEN / THEN the first reads with no test images, the second names the missing folder
    assert discover(tmp_path / "ok").size("test") == 0
    with pytest.raises(DatasetError, match="no valid/ folder"):
        discover(tmp_path / "bad")
    with pytest.raises(DatasetError, match="not a directory"):
        discover(tmp_path / "absent")


def test_a_split_without_images_is_refused(tmp_path: Path) -> None:
    # GIVEN class folders with nothing in valid/
    write_tree(tmp_path, {"train": {"a": 1}, "valid": {"a": 0}})
    # WHEN / THEN
    with pytest.raises(DatasetError, match="holds no images"):
        discover(tmp_path)


def test_evaluation_uses_exactly_the_serving_transform_and_training_only_adds_a_flip() -> None:
    # GIVEN an asymmetric image and the imagenet preprocessing
    image = Image.linear_gradient("L").convert("RGB").resize((300, 200))
    spec = Preprocessing.preset("imagenet")
    served = to_tensor(image, spec)
    flipped = to_tensor(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), spec)
    # WHEN both transforms run many times
    evaluated = EvalTransform(spec)(image)
    torch.manual_seed(0)
    trained = [TrainTransform(spec)(image) for _ in range(20)]
    # THEN evaluation equals serving bit for bit, and training gives serving's tensor or its mirror
    assert torch.equal(evaluated, served)
    assert all(torch.equal(t, served) or torch.equal(t, flipped) for t in trained)
    assert any(torch.equal(t, flipped) for t in trained) and any(torch.equal(t, served) for t in trained)


def test_evaluation_shards_count_every_image_exactly_once() -> None:
    # GIVEN 10 images over 3 processes
    shards = [shard(10, rank, 3) for rank in range(3)]
    # WHEN / THEN their union is every index once (no DistributedSampler padding)
    assert sorted(i for part in shards for i in part) == list(range(10))


def test_loaders_split_training_between_processes(tmp_path: Path) -> None:
    # GIVEN 6 training images and two processes
    tree = discover(write_tree(tmp_path, {"train": {"a": 3, "b": 3}, "valid": {"a": 1, "b": 2}}))
    spec = Preprocessing(resize_mode="exact", size=(8, 8))
    # WHEN each process builds its loaders
    loaders = [make_loaders(tree, spec, batch_size=2, workers=0, rank=r, world_size=2, seed=0) for r in (0, 1)]
    # THEN each trains on half, evaluates its own shard, and has no test loader
    assert [len(ld.train_sampler) for ld in loaders] == [3, 3]
    assert sum(len(ld.valid.dataset) for ld in loaders) == 3  # type: ignore[arg-type,misc]
    images, labels = next(iter(loaders[0].train))
    assert images.shape == (2, 3, 8, 8) and labels.dtype == torch.int64
    assert loaders[0].test is None


def test_an_unreadable_image_names_its_path(tmp_path: Path) -> None:
    # GIVEN a file with an image suffix that is not an image
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    # WHEN / THEN
    with pytest.raises(DatasetError, match="broken.jpg"):
        load_rgb(broken)
