"""Unit tests for model_store.loader: resolving versions and aliases, and refusing anything not intact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from model_store.exceptions import (
    ArchitectureError,
    ChecksumError,
    ManifestError,
    VariantError,
    VersionNotFoundError,
)
from model_store.loader import VARIANT_LOADERS, load, resolve_version_dir
from model_store.manifest import Architecture, Manifest, Preprocessing, WeightsFile
from model_store.predictor import TorchPredictor
from model_store.resnet import build_model
from model_store.weights import save_safetensors, sha256_file

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("001.Akita", "002.Beagle", "003.Corgi")
ARCH = Architecture(depth=18)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A real ResNet-18 (3 classes) and its safetensors file, built once for the module."""
    torch.manual_seed(0)
    model = build_model(ARCH, len(CLASSES)).eval()
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_safetensors(model.state_dict(), path)
    return model, path


def install_version(root: Path, weights: Path, *, name: str = "dogs", version: str = "v1",
                    classes: tuple[str, ...] = CLASSES, alias: str | None = None) -> Path:
    """Lay out a synced version by hand, as `sync` would leave it."""
    directory = root / name / "versions" / version
    directory.mkdir(parents=True)
    shutil.copyfile(weights, directory / "model.safetensors")
    entry = WeightsFile(file="model.safetensors", format="safetensors", sha256=sha256_file(weights),
                        size=weights.stat().st_size)
    manifest = Manifest(name=name, version=version, arch=ARCH, class_names=classes,
                        preprocess=Preprocessing.preset("resize224"), weights={"fp32": entry}, trained=True)
    (directory / "manifest.json").write_text(manifest.to_json())
    if alias:
        os.symlink(f"versions/{version}", root / name / alias)
    return directory


@pytest.fixture
def root(tmp_path: Path, reference: tuple[torch.nn.Module, Path]) -> Iterator[Path]:
    """A model root holding dogs/v1 with alias prod."""
    install_version(tmp_path, reference[1], alias="prod")
    yield tmp_path


def test_load_by_version_gives_the_same_logits_in_eval_mode(root: Path,
                                                            reference: tuple[torch.nn.Module, Path]) -> None:
    # GIVEN a synced ResNet-18 / WHEN loaded by version with 1 thread
    before = torch.get_num_threads()
    try:
        loaded = load(root, "dogs", version="v1", threads=1)
    finally:
        torch.set_num_threads(before)
    # THEN a torch predictor in eval mode, on real tensors, computes what the original model computes
    assert isinstance(loaded.predictor, TorchPredictor)
    assert (loaded.predictor.engine, loaded.predictor.threads) == ("torch", 1)
    assert not loaded.predictor.module.training
    assert not any(p.is_meta for p in loaded.predictor.module.parameters())
    probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = reference[0](probe).numpy()
    logits = loaded.predictor(probe.numpy())
    assert logits.dtype == np.float32 and np.array_equal(logits, expected)
    assert loaded.manifest.class_names == CLASSES
    assert (loaded.directory, loaded.variant) == (root / "dogs" / "versions" / "v1", "fp32")


def test_load_by_alias_resolves_to_the_version_directory(root: Path) -> None:
    # GIVEN alias prod -> versions/v1 / WHEN loaded by alias
    loaded = load(root, "dogs", alias="prod")
    # THEN the real version directory is reported (a later alias swap cannot move it)
    assert loaded.directory == root / "dogs" / "versions" / "v1"
    assert loaded.manifest.version == "v1"


def test_missing_version_lists_versions_and_aliases_present(root: Path) -> None:
    # GIVEN only v1 (alias prod) / WHEN v2 is asked for / THEN the error says what IS there
    with pytest.raises(VersionNotFoundError) as caught:
        resolve_version_dir(root, "dogs", version="v2")
    message = str(caught.value)
    assert "'v2'" in message and "versions present: v1" in message and "prod -> v1" in message


def test_missing_alias_lists_what_is_present(root: Path) -> None:
    with pytest.raises(VersionNotFoundError, match=r"no alias 'canary'.*versions present: v1"):
        resolve_version_dir(root, "dogs", alias="canary")


def test_missing_model_lists_the_models_present(root: Path) -> None:
    with pytest.raises(VersionNotFoundError, match="models present: dogs"):
        load(root, "cats", version="v1")


def test_dangling_alias_says_which_version_it_points_to(root: Path) -> None:
    # GIVEN alias next -> versions/v7, which was never synced
    os.symlink("versions/v7", root / "dogs" / "next")
    # WHEN loaded by that alias / THEN the error names v7 and the alias
    with pytest.raises(VersionNotFoundError, match=r"'v7'.*alias 'next' points to it"):
        load(root, "dogs", alias="next")


def test_neither_version_nor_alias_is_refused(root: Path) -> None:
    with pytest.raises(VersionNotFoundError, match="exactly one"):
        resolve_version_dir(root, "dogs")


def test_corrupt_manifest_is_refused(root: Path) -> None:
    # GIVEN a manifest cut short / WHEN loaded / THEN ManifestError naming the file
    manifest = root / "dogs" / "versions" / "v1" / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(ManifestError, match=r"manifest.json: manifest is not valid JSON"):
        load(root, "dogs", version="v1")


def test_unknown_schema_version_is_refused(root: Path) -> None:
    # GIVEN a manifest from a future breedserve / WHEN loaded / THEN ManifestError naming the schema
    path = root / "dogs" / "versions" / "v1" / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="unsupported manifest schema_version 99"):
        load(root, "dogs", version="v1")


def test_manifest_of_another_version_is_refused(root: Path, reference: tuple[torch.nn.Module, Path]) -> None:
    # GIVEN v2's directory holding v1's manifest (copied by hand)
    install_version(root, reference[1], version="v2")
    shutil.copyfile(root / "dogs" / "versions" / "v1" / "manifest.json",
                    root / "dogs" / "versions" / "v2" / "manifest.json")
    # WHEN v2 is loaded / THEN it is refused
    with pytest.raises(ManifestError, match="describes dogs/v1, not dogs/v2"):
        load(root, "dogs", version="v2")


def test_checksum_mismatch_is_refused(root: Path) -> None:
    # GIVEN one flipped byte in the weights (same size)
    weights = root / "dogs" / "versions" / "v1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    # WHEN loaded / THEN ChecksumError with both digests
    with pytest.raises(ChecksumError, match="has sha256 [0-9a-f]{64} but the manifest records"):
        load(root, "dogs", version="v1")


def test_truncated_weights_are_refused(root: Path) -> None:
    # GIVEN weights cut short (an interrupted copy by hand)
    weights = root / "dogs" / "versions" / "v1" / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size // 2)
    # WHEN loaded / THEN ChecksumError with both sizes
    with pytest.raises(ChecksumError, match=f"is {size // 2} bytes but the manifest records {size}"):
        load(root, "dogs", version="v1")


def test_missing_weights_file_is_refused(root: Path) -> None:
    (root / "dogs" / "versions" / "v1" / "model.safetensors").unlink()
    with pytest.raises(ChecksumError, match="is missing"):
        load(root, "dogs", version="v1")


def test_unknown_variant_is_refused(root: Path) -> None:
    with pytest.raises(VariantError, match="unknown weights variant 'int4'.*loads fp32"):
        load(root, "dogs", version="v1", variant="int4")


def test_known_variant_absent_from_the_version_is_refused(root: Path) -> None:
    # GIVEN a version published without int8 / WHEN int8 is asked for / THEN the error lists what it has
    assert "int8" in VARIANT_LOADERS
    with pytest.raises(VariantError, match="dogs/v1 has no 'int8' weights; it has fp32"):
        load(root, "dogs", version="v1", variant="int8")


def test_weights_that_do_not_fit_the_manifest_are_refused(tmp_path: Path,
                                                          reference: tuple[torch.nn.Module, Path]) -> None:
    # GIVEN 3-class weights whose manifest lists 4 classes
    install_version(tmp_path, reference[1], classes=CLASSES + ("004.Dachshund",))
    # WHEN loaded / THEN ArchitectureError rather than a half-loaded model
    with pytest.raises(ArchitectureError, match="does not fit resnet18 with 4 classes"):
        load(tmp_path, "dogs", version="v1")


def test_half_precision_weights_in_the_fp32_slot_are_refused(tmp_path: Path,
                                                             reference: tuple[torch.nn.Module, Path]) -> None:
    # GIVEN fp16 weights published as the fp32 variant
    half = tmp_path / "half.safetensors"
    state = reference[0].state_dict()
    save_safetensors({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, half)
    install_version(tmp_path / "root", half)
    # WHEN loaded / THEN VariantError naming the dtype
    with pytest.raises(VariantError, match="fp32 variant but holds torch.float16"):
        load(tmp_path / "root", "dogs", version="v1")


def test_loading_never_imports_torchvision(root: Path) -> None:
    # GIVEN a fresh interpreter (torchvision costs ~1.3 s of cold start)
    code = ("import sys; from model_store.loader import load; "
            f"load({str(root)!r}, 'dogs', alias='prod'); print('torchvision' in sys.modules)")
    # WHEN it loads a model / THEN torchvision was never imported
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
