"""Publishing: a trained model in, an immutable model version in a store out.

The pipeline, in order, so that nothing reaches the store unless it will serve:

1. refuse at once if the version already exists (versions are immutable);
2. read the weights (`.pth` only through the weights-only unpickler, SageMaker `model.tar.gz`,
   or `.safetensors`; a local path or an `s3://` URI), as float32;
3. detect the architecture from the keys (flags override), resolve class names and preprocessing;
4. build our torchvision-compatible ResNet, load the weights strictly and run one forward pass:
   the output must have one finite logit per class name;
5. make the faster variants asked for (`model_store.variants`), both ONNX graphs for ONNX
   Runtime: int8 calibrated on the `calibration` images and judged against fp32 on held-out
   ones, the fp32 graph kept only when it measures >= 10% faster than torch; a variant that
   fails its gate is refused and logged, the version is still published with the rest;
6. upload the safetensors weights and each variant's file, then the manifest (a version exists
   only once its manifest does; the version is checked again just before), then the alias.

`publish_state_dict` is the same pipeline for an in-memory state dict: what training calls.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from model_store.exceptions import ArchitectureError, ManifestError, ModelStoreError, SourceError, StoreError
from model_store.manifest import (
    FP32_FORMAT,
    WEIGHTS_FILE,
    Architecture,
    Head,
    Manifest,
    Preprocessing,
    WeightsFile,
    check_name,
    dog_breed_classes,
    read_class_file,
)
from model_store.resnet import build_model, check_state_dict, detect_architecture
from model_store.store import Store, check_key, manifest_key, open_store, version_key, write_alias
from model_store.variants import CalibrationArg, build_variants, calibration_inputs
from model_store.weights import read_state_dict, save_safetensors, sha256_file

ClassesArg = str | Path | Sequence[str] | None
PreprocessArg = str | Path | Preprocessing
log = logging.getLogger(__name__)


def publish(
    source: str | Path,
    store_uri: str,
    name: str,
    version: str,
    *,
    alias: str | None = None,
    depth: int | None = None,
    head_hidden: int | None = None,
    classes: ClassesArg = None,
    preprocess: PreprocessArg = "resize224",
    trained: bool = True,
    metrics: Mapping[str, Any] | None = None,
    progress: bool = True,
    calibration: CalibrationArg = None,
    graph: bool = False,
) -> Manifest:
    """Publish weights from `source` (local path or `s3://bucket/key`) as `name`/`version` in `store_uri`.

    `depth` and `head_hidden` override what the keys say; `classes` is a class file (one name
    per line) or a list, default the 133 dogImages breeds; `preprocess` is a preset name
    (`resize224`, `imagenet`) or a JSON file. `calibration` (a directory of images, or a list
    of PIL images) adds the int8 variant, `graph` tries the fp32 ONNX graph variant (see
    `model_store.variants`). Step messages go to this module's logger and transfers show the
    store's progress line, when `progress` is on.
    """
    _check_names(name, version, alias)
    class_names = resolve_classes(classes)
    spec = resolve_preprocessing(preprocess)
    inputs = calibration_inputs(calibration, spec)  # a bad directory fails before a long download
    store = open_store(store_uri)
    _refuse_existing(store, name, version)  # before a long download
    with tempfile.TemporaryDirectory(prefix="breedserve-publish-") as workdir:
        local = _fetch_source(str(source), Path(workdir), progress)
        _step(progress, f"reading {local}")
        state_dict = read_state_dict(local)
    arch, num_classes = _choose_architecture(state_dict, depth, head_hidden)
    if num_classes is not None:
        _step(progress, f"detected {_describe_arch(arch)} with {num_classes} outputs")
    return _check_and_upload(state_dict, store, name, version, arch=arch, class_names=class_names, spec=spec,
                             trained=trained, source=str(source), metrics=metrics, alias=alias,
                             progress=progress, variants=_VariantRequest(inputs, graph))


def publish_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    store_uri: str,
    name: str,
    version: str,
    *,
    arch: Architecture,
    class_names: Sequence[str],
    preprocess: PreprocessArg,
    trained: bool,
    source: str,
    metrics: Mapping[str, Any] | None = None,
    alias: str | None = None,
    progress: bool = True,
    calibration: CalibrationArg = None,
    graph: bool = False,
) -> Manifest:
    """Check an in-memory state dict end to end, then upload weights, manifest and alias, in that order.

    `calibration` and `graph` ask for the faster variants, as in `publish`.
    """
    _check_names(name, version, alias)
    spec = resolve_preprocessing(preprocess)
    request = _VariantRequest(calibration_inputs(calibration, spec), graph)
    return _check_and_upload(state_dict, open_store(store_uri), name, version, arch=arch,
                             class_names=resolve_classes(class_names), spec=spec,
                             trained=trained, source=source, metrics=metrics, alias=alias, progress=progress,
                             variants=request)


@dataclass(frozen=True)
class _VariantRequest:
    """Which faster variants to try: int8 when calibration inputs are given, the graph when asked."""

    calibration: list[np.ndarray] = field(default_factory=list)
    graph: bool = False


def _check_and_upload(state_dict: Mapping[str, torch.Tensor], store: Store, name: str, version: str, *,
                      arch: Architecture, class_names: tuple[str, ...], spec: Preprocessing, trained: bool,
                      source: str, metrics: Mapping[str, Any] | None, alias: str | None,
                      progress: bool, variants: _VariantRequest | None = None) -> Manifest:
    """The shared tail of both entry points: gate, variants, then weights, manifest, alias."""
    _refuse_existing(store, name, version)
    weights = {key: _as_fp32(tensor) for key, tensor in state_dict.items()}
    verify_weights(weights, arch, class_names, spec)
    _step(progress, f"checked {_describe_arch(arch)}: strict load and one forward pass give "
                    f"{len(class_names)} finite logits")
    with tempfile.TemporaryDirectory(prefix="breedserve-publish-") as workdir:
        weights_path = Path(workdir) / WEIGHTS_FILE
        save_safetensors(weights, weights_path)
        entry = WeightsFile(file=WEIGHTS_FILE, format=FP32_FORMAT, sha256=sha256_file(weights_path),
                            size=weights_path.stat().st_size)
        files = {"fp32": (entry, weights_path)}
        all_metrics = dict(metrics or {})
        if variants is not None and (variants.calibration or variants.graph):
            kept, figures, refused = build_variants(
                weights, arch, len(class_names), spec, Path(workdir),
                calibration=variants.calibration, graph=variants.graph,
                say=lambda message: _step(progress, message))
            for variant in kept:
                files[variant.name] = (WeightsFile(file=variant.path.name, format=variant.format,
                                                   sha256=sha256_file(variant.path),
                                                   size=variant.path.stat().st_size), variant.path)
            all_metrics["variants"] = figures
            if refused:
                all_metrics["refused_variants"] = refused
        manifest = Manifest(
            name=name, version=version, arch=arch, class_names=class_names, preprocess=spec,
            weights={key: file_entry for key, (file_entry, _) in files.items()}, trained=trained,
            source=source, metrics=all_metrics,
        )
        for variant_name, (file_entry, path) in files.items():
            weights_key = version_key(name, version, file_entry.file)
            _step(progress, f"uploading {variant_name} ({file_entry.size / 1e6:.1f} MB) "
                            f"to {store.describe(weights_key)}")
            store.put_file(weights_key, path, progress=True if progress else None)
    _refuse_existing(store, name, version)  # another publisher may have finished meanwhile
    store.write_bytes(manifest_key(name, version), manifest.to_json().encode("utf-8"))
    _step(progress, f"published {name} {version} with {', '.join(manifest.weights)} "
                    f"(fp32 sha256 {entry.sha256[:12]}...)")
    if alias is not None:
        write_alias(store, name, alias, version)
        _step(progress, f"alias {alias} -> {version}")
    return manifest


def verify_weights(state_dict: Mapping[str, torch.Tensor], arch: Architecture, class_names: Sequence[str],
                   spec: Preprocessing) -> None:
    """Load strictly and run once; raise ArchitectureError saying exactly what does not fit.

    This is the gate before any upload: a version that reaches the store is one that serves.
    """
    num_classes = _head_outputs(state_dict, arch)
    if num_classes is not None and num_classes != len(class_names):
        raise ArchitectureError(
            f"head has {num_classes} outputs but {len(class_names)} class names given"
        )
    check_state_dict(arch, len(class_names), state_dict)
    model = build_model(arch, len(class_names), device="meta")
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    model.eval()
    height, width = spec.probe_size
    probe = torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = model(probe)
    if tuple(logits.shape) != (1, len(class_names)):
        raise ArchitectureError(
            f"one forward pass gave logits of shape {list(logits.shape)}, expected [1, {len(class_names)}]"
        )
    if not torch.isfinite(logits).all():
        broken = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        where = f"; tensors holding NaN/inf: {', '.join(broken[:8])}" if broken else ""
        raise ArchitectureError(f"one forward pass gave non-finite logits (NaN or inf){where}")


def resolve_classes(classes: ClassesArg) -> tuple[str, ...]:
    """None -> the 133 dogImages breeds; a path -> its lines; a sequence -> as given."""
    if classes is None:
        return dog_breed_classes()
    if isinstance(classes, (str, Path)):
        return read_class_file(Path(classes))
    names = tuple(str(c) for c in classes)
    if not names or len(set(names)) != len(names):
        raise ManifestError("class names must be a non-empty list without repeats")
    return names


def resolve_preprocessing(preprocess: PreprocessArg) -> Preprocessing:
    """A `Preprocessing`, a preset name (`resize224`, `imagenet`) or the path of a JSON file."""
    if isinstance(preprocess, Preprocessing):
        return preprocess
    text = str(preprocess)
    if not text.endswith(".json"):
        return Preprocessing.preset(text)
    try:
        data = json.loads(Path(text).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(f"cannot read preprocessing file {text}: {exc}") from exc
    except ValueError as exc:
        raise ManifestError(f"preprocessing file {text} is not valid JSON: {exc}") from exc
    return Preprocessing.from_dict(data)


def _choose_architecture(state_dict: Mapping[str, torch.Tensor], depth: int | None,
                         head_hidden: int | None) -> tuple[Architecture, int | None]:
    """Detected architecture with the flags applied; flags alone when detection fails and they suffice."""
    try:
        arch, num_classes = detect_architecture(state_dict)
    except ArchitectureError:
        if depth is None:
            raise
        head = Head(type="mlp", hidden=head_hidden) if head_hidden else Head(type="linear")
        return Architecture(depth=depth, head=head), None  # verify_weights will say what does not fit
    if depth is not None:
        arch = replace(arch, depth=depth)
    if head_hidden is not None:
        arch = replace(arch, head=Head(type="mlp", hidden=head_hidden, dropout=arch.head.dropout))
    return arch, num_classes


def _head_outputs(state_dict: Mapping[str, torch.Tensor], arch: Architecture) -> int | None:
    """How many logits the head's last Linear produces, if its weight is there."""
    key = "fc.weight" if arch.head.type == "linear" else f"fc.{3 if arch.head.dropout else 2}.weight"
    weight = state_dict.get(key)
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def _as_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """The `fp32` variant, on the CPU: floating tensors as float32, integer buffers (num_batches_tracked) as is."""
    tensor = tensor.detach().to("cpu")
    return tensor.to(torch.float32) if tensor.is_floating_point() else tensor


def _check_names(name: str, version: str, alias: str | None) -> None:
    check_name("name", name)
    check_name("version", version)
    if alias is not None:
        check_name("alias", alias)


def _refuse_existing(store: Store, name: str, version: str) -> None:
    if store.exists(manifest_key(name, version)):
        raise ModelStoreError(
            f"{name} {version} is already published in {store.uri} and versions are immutable: "
            "publish a new version (and move an alias to it) instead"
        )


def _fetch_source(source: str, workdir: Path, progress: bool) -> Path:
    """A local path as is; an `s3://bucket/key` downloaded into `workdir` under its own file name."""
    if not source.startswith("s3://"):
        path = Path(source.removeprefix("file://"))
        if not path.is_file():
            raise SourceError(f"weights source {source} does not exist or is not a file")
        return path
    bucket, _, key = source.removeprefix("s3://").partition("/")
    parent, file_name = PurePosixPath(key).parent.as_posix(), PurePosixPath(key).name
    if not bucket or not file_name or key.endswith("/"):
        raise SourceError(f"{source} is not an S3 object URI: expected s3://bucket/path/model.tar.gz")
    try:
        check_key(file_name)
    except StoreError as exc:
        raise SourceError(f"cannot download {source}: unsupported file name ({exc})") from exc
    remote = open_store(f"s3://{bucket}" + ("" if parent == "." else f"/{parent}"))
    if not remote.exists(file_name):
        raise SourceError(f"{source} does not exist")
    local = workdir / file_name
    _step(progress, f"downloading {source}")
    remote.get_file(file_name, local, progress=True if progress else None)
    return local


def _describe_arch(arch: Architecture) -> str:
    head = arch.head
    if head.type == "linear":
        return f"{arch.label}, Linear head"
    return f"{arch.label}, head Linear({head.hidden}), ReLU, {'Dropout, ' if head.dropout else ''}Linear"


def _step(progress: bool, message: str) -> None:
    if progress:
        log.info("%s", message)
