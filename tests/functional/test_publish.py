"""Publishing end to end: SageMaker archives, file and S3 (moto) stores, and every refusal."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision import transforms

import model_store.publish as publish_module
from model_store.demo import DEMO_ARCH, demo_state_dict, publish_demo
from model_store.exceptions import ArchitectureError, ModelStoreError, UnsafeWeightsError
from model_store.manifest import Architecture, Head, Manifest, Preprocessing, dog_breed_classes
from model_store.preprocess import to_tensor
from model_store.publish import publish, publish_state_dict
from model_store.resnet import build_model
from model_store.store import open_store
from model_store.weights import save_safetensors, sha256_file


def sagemaker_resnet50() -> nn.Module:
    """The course project's model: torchvision resnet50 with the 128-unit head (FACTS.md)."""
    torch.manual_seed(50)
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Sequential(nn.Linear(2048, 128), nn.ReLU(inplace=True), nn.Linear(128, 133))
    return model.eval()


def small_state_dict(num_classes: int = 133, seed: int = 18) -> dict[str, torch.Tensor]:
    """A ResNet-18 with a Linear head: where depth does not matter, the cheapest real model."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    return model.state_dict()


def write_tar_gz(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    """A SageMaker `model.tar.gz` holding `model.pth` = torch.save(state_dict).

    gzip level 0 (stored blocks) is still gzip to the reader; float weights barely compress, and
    level 1 would cost seconds per model on a shared two-core machine.
    """
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    info = tarfile.TarInfo("model.pth")
    info.size = buffer.getbuffer().nbytes
    buffer.seek(0)
    with tarfile.open(path, "w:gz", compresslevel=0) as archive:
        archive.addfile(info, buffer)
    return path


def png_photo(path: Path) -> Path:
    """An odd-sized PNG with structure and noise, so preprocessing differences would show in the logits."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:251, 0:333]
    pixels = np.stack([xx * 0.7, yy, 255 * ((xx // 40 + yy // 40) % 2)], axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="RGB").save(path, format="PNG")
    return path


def file_store(tmp_path: Path) -> tuple[str, Path]:
    root = tmp_path / "store"
    return f"file://{root}", root


def stored_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_sagemaker_archive_serves_the_logits_of_the_original_model(tmp_path: Path) -> None:
    # GIVEN a SageMaker model.tar.gz of the original ResNet-50 and a PNG photo
    reference = sagemaker_resnet50()
    archive = write_tar_gz(tmp_path / "model.tar.gz", reference.state_dict())
    photo = png_photo(tmp_path / "dog.png")
    store_uri, root = file_store(tmp_path)
    # WHEN it is published with only the preprocessing named
    manifest = publish(str(archive), store_uri, "dogbreeds", "v1", preprocess="resize224", progress=False)
    # THEN the manifest describes the original training job
    assert manifest.arch == Architecture(depth=50, head=Head(type="mlp", hidden=128, dropout=False))
    assert manifest.class_names == dog_breed_classes() and manifest.num_classes == 133
    assert manifest.preprocess == Preprocessing.preset("resize224") and manifest.trained
    assert manifest.source == str(archive)
    assert stored_files(root) == ["dogbreeds/v1/manifest.json", "dogbreeds/v1/model.safetensors"]
    weights_path = root / "dogbreeds/v1/model.safetensors"
    assert manifest.weights["fp32"].sha256 == sha256_file(weights_path)
    assert manifest.weights["fp32"].size == weights_path.stat().st_size
    assert Manifest.read(root / "dogbreeds/v1/manifest.json") == manifest
    # AND the served path (our preprocessing, our ResNet on meta + safetensors) gives the original logits
    served = build_model(manifest.arch, manifest.num_classes, device="meta")
    served.load_state_dict(load_file(str(weights_path)), strict=True, assign=True)
    served.eval()
    image = Image.open(photo).convert("RGB")
    original = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor()])
    with torch.inference_mode():
        expected = reference(original(image).unsqueeze(0))
        got = served(to_tensor(image, manifest.preprocess).unsqueeze(0))
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.fixture
def buckets(aws_endpoint: str) -> Any:
    """Two empty buckets on the moto server: one for training output, one for the model store."""
    client = boto3.client("s3", region_name="us-east-1")
    for bucket in ("training-output", "model-store"):
        client.create_bucket(Bucket=bucket)
    return client


def test_publish_from_s3_source_to_s3_store(tmp_path: Path, buckets: Any) -> None:
    # GIVEN a model.tar.gz in the training bucket (moto on 127.0.0.1)
    state = small_state_dict()
    client = buckets
    archive = write_tar_gz(tmp_path / "model.tar.gz", state)
    client.upload_file(str(archive), "training-output", "jobs/hpo-7/output/model.tar.gz")
    source = "s3://training-output/jobs/hpo-7/output/model.tar.gz"
    # WHEN it is published to an S3 store with an alias
    manifest = publish(source, "s3://model-store/prod", "dogbreeds", "v7", alias="live", progress=False)
    # THEN the version, its manifest and the alias are in the store under the prefix
    listing = client.list_objects_v2(Bucket="model-store")["Contents"]
    assert sorted(item["Key"] for item in listing) == [
        "prod/dogbreeds/aliases/live.json", "prod/dogbreeds/v7/manifest.json", "prod/dogbreeds/v7/model.safetensors",
    ]
    store = open_store("s3://model-store/prod")
    assert json.loads(store.read_bytes("dogbreeds/aliases/live.json"))["version"] == "v7"
    assert Manifest.from_json(store.read_bytes("dogbreeds/v7/manifest.json")) == manifest
    assert manifest.source == source and manifest.arch == Architecture(depth=18)
    # AND the stored weights are the trained tensors, unchanged
    store.get_file("dogbreeds/v7/model.safetensors", tmp_path / "fetched.safetensors")
    fetched = load_file(str(tmp_path / "fetched.safetensors"))
    assert sorted(fetched) == sorted(state) and all(torch.equal(fetched[k], v) for k, v in state.items())


def test_missing_s3_source_is_a_clear_error(buckets: Any) -> None:
    # GIVEN / WHEN an S3 source that does not exist is published
    with pytest.raises(ModelStoreError, match="s3://training-output/nope/model.tar.gz does not exist"):
        publish("s3://training-output/nope/model.tar.gz", "s3://model-store", "dogbreeds", "v1", progress=False)
    # THEN nothing is in the store
    assert "Contents" not in buckets.list_objects_v2(Bucket="model-store")


def test_class_count_mismatch_fails_before_any_upload(tmp_path: Path) -> None:
    # GIVEN a 133-class model and a class file with 120 names
    source = tmp_path / "model.pth"
    torch.save(small_state_dict(133), source)
    classes = tmp_path / "classes.txt"
    classes.write_text("".join(f"{i:03d}.Breed_{i}\n" for i in range(1, 121)))
    store_uri, root = file_store(tmp_path)
    # WHEN it is published
    with pytest.raises(ArchitectureError, match="head has 133 outputs but 120 class names given"):
        publish(str(source), store_uri, "dogbreeds", "v1", classes=classes, progress=False)
    # THEN the store holds nothing
    assert stored_files(root) == []


def test_malicious_pth_is_refused_with_nothing_uploaded(tmp_path: Path) -> None:
    # GIVEN a model.pth whose pickle would create a marker file
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    source = tmp_path / "model.pth"
    torch.save({"fc.weight": torch.zeros(133, 512), "payload": Payload()}, source)
    store_uri, root = file_store(tmp_path)
    # WHEN it is published
    with pytest.raises(UnsafeWeightsError, match="was refused"):
        publish(str(source), store_uri, "dogbreeds", "v1", progress=False)
    # THEN nothing ran and nothing was uploaded
    assert not marker.exists()
    assert stored_files(root) == []


def test_published_version_is_immutable(tmp_path: Path) -> None:
    # GIVEN a published version
    source = tmp_path / "model.pth"
    torch.save(small_state_dict(), source)
    store_uri, root = file_store(tmp_path)
    publish(str(source), store_uri, "dogbreeds", "v1", progress=False)
    before = (root / "dogbreeds/v1/manifest.json").read_bytes()
    # WHEN the same version is published again, from other weights
    torch.save(small_state_dict(seed=99), source)
    with pytest.raises(ModelStoreError, match="dogbreeds v1 is already published .* versions are immutable"):
        publish(str(source), store_uri, "dogbreeds", "v1", progress=False)
    # THEN the stored version is untouched
    assert (root / "dogbreeds/v1/manifest.json").read_bytes() == before


def test_weights_then_manifest_then_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a store that records every write
    writes: list[str] = []
    real_open_store = publish_module.open_store

    def recording_open_store(uri: str) -> object:
        store = real_open_store(uri)
        put_file, write_bytes = store.put_file, store.write_bytes

        def put(key: str, path: Path, progress: object = None) -> None:
            writes.append(key)
            put_file(key, path, progress)  # type: ignore[arg-type]

        def write(key: str, data: bytes) -> None:
            writes.append(key)
            write_bytes(key, data)

        store.put_file, store.write_bytes = put, write  # type: ignore[method-assign]
        return store

    monkeypatch.setattr(publish_module, "open_store", recording_open_store)
    source = tmp_path / "model.safetensors"
    save_safetensors(small_state_dict(), source)
    store_uri, _ = file_store(tmp_path)
    # WHEN a .safetensors file is published with an alias
    publish(str(source), store_uri, "dogbreeds", "v2", alias="live", progress=False)
    # THEN the weights went first, the manifest (which makes the version exist) next, the alias last
    assert writes == ["dogbreeds/v2/model.safetensors", "dogbreeds/v2/manifest.json", "dogbreeds/aliases/live.json"]


def test_flags_override_detection_and_mismatch_is_explained(tmp_path: Path) -> None:
    # GIVEN ResNet-18 weights
    source = tmp_path / "model.pth"
    torch.save(small_state_dict(), source)
    store_uri, root = file_store(tmp_path)
    # WHEN they are published as a ResNet-34, or with a hidden layer they do not have
    with pytest.raises(ArchitectureError, match=r"do not fit resnet34 .* missing keys \(\d+\): layer1\.2\."):
        publish(str(source), store_uri, "dogbreeds", "v1", depth=34, progress=False)
    with pytest.raises(ArchitectureError, match=r"missing keys \(4\): fc\.0\.weight, fc\.0\.bias, fc\.2\.weight"):
        publish(str(source), store_uri, "dogbreeds", "v1", head_hidden=64, progress=False)
    # THEN nothing was uploaded
    assert stored_files(root) == []


def test_non_finite_weights_fail_the_forward_check(tmp_path: Path) -> None:
    # GIVEN weights with a NaN in the head
    state = small_state_dict()
    state["fc.bias"][5] = float("nan")
    store_uri, root = file_store(tmp_path)
    # WHEN they are published from memory
    with pytest.raises(ArchitectureError, match=r"non-finite logits .* tensors holding NaN/inf: fc\.bias"):
        publish_state_dict(state, store_uri, "dogbreeds", "v1", arch=Architecture(depth=18),
                           class_names=dog_breed_classes(), preprocess="resize224", trained=True,
                           source="test", progress=False)
    # THEN nothing was uploaded
    assert stored_files(root) == []


def test_preprocessing_from_json_file_and_fp16_weights(tmp_path: Path) -> None:
    # GIVEN half-precision weights, a 3-class list and a preprocessing JSON file
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in small_state_dict(3).items()}
    spec_file = tmp_path / "preprocess.json"
    spec_file.write_text(json.dumps({"resize_mode": "shorter_side", "size": [160], "crop": 128,
                                     "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}))
    source = tmp_path / "model.pth"
    torch.save(state, source)
    store_uri, root = file_store(tmp_path)
    # WHEN it is published
    manifest = publish(str(source), store_uri, "cats", "v1", classes=["a", "b", "c"],
                       preprocess=str(spec_file), trained=False, metrics={"top1": 0.5}, progress=False)
    # THEN the manifest carries the file's preprocessing and the weights are stored as float32
    assert manifest.preprocess == Preprocessing(resize_mode="shorter_side", size=(160,), crop=128,
                                                mean=(0.5,) * 3, std=(0.25,) * 3)
    assert manifest.class_names == ("a", "b", "c") and manifest.metrics == {"top1": 0.5} and not manifest.trained
    stored = load_file(str(root / "cats/v1/model.safetensors"))
    assert stored["fc.weight"].dtype == torch.float32
    assert torch.equal(stored["fc.weight"], state["fc.weight"].float())


def test_publish_demo(tmp_path: Path) -> None:
    # GIVEN an empty file store
    store_uri, root = file_store(tmp_path)
    # WHEN the demo model is published with an alias
    manifest = publish_demo(store_uri, "dogbreeds", "demo-1", alias="live")
    # THEN it is the untrained ResNet-50 with 133 breeds and resize224, and the weights are the seed-0 ones
    assert manifest.arch == DEMO_ARCH and manifest.num_classes == 133 and not manifest.trained
    assert manifest.preprocess == Preprocessing.preset("resize224")
    assert json.loads((root / "dogbreeds/aliases/live.json").read_text())["version"] == "demo-1"
    stored = load_file(str(root / "dogbreeds/demo-1/model.safetensors"))
    expected = demo_state_dict(0)
    assert all(torch.equal(stored[k], v) for k, v in expected.items())
    # AND int8 was calibrated on the generated pictures, judged, and published as an ONNX graph
    int8 = manifest.metrics["variants"]["int8"]
    assert manifest.weights["int8"].format == "onnx-int8" and (root / "dogbreeds/demo-1/model-int8.onnx").is_file()
    assert int8["top1_agreement"] >= 0.99 and int8["top5_overlap"] >= 0.95 and int8["calibration_images"] == 24
    # AND the fp32 graph is either kept (>= 10% faster than torch here) or refused with its timing
    assert ("fp32-graph" in manifest.weights) != ("fp32-graph" in manifest.metrics.get("refused_variants", {}))
