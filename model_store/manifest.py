"""The manifest: everything needed to serve a model version, stored beside its weights.

The manifest is the contract between publishing, training and serving: it carries the
architecture, the labels and the preprocessing, so the handler never guesses any of them.
A version exists only once its manifest is written (it is always written last).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from model_store.exceptions import ManifestError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
FP32_FORMAT = "safetensors"
INT8_FORMAT = "onnx-int8"
GRAPH_FORMAT = "onnx-fp32"
VARIANT_FORMATS = {"fp32": FP32_FORMAT, "int8": INT8_FORMAT, "fp32-graph": GRAPH_FORMAT}
"""variant name -> the one file format this breedserve serves it from (`model_store.variants`).

The manifest records any format string as it was published; a format that is not the one here
(an older breedserve's `safetensors-int8-x86` or `torchscript`) is refused when that variant is
loaded (`model_store.loader`), so a version keeps serving its other variants."""
RESNET_DEPTHS = (18, 34, 50, 101, 152)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, value: str) -> str:
    """Validate a model name, version or alias: they become path and S3 key segments."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or value in {".", ".."}:
        raise ManifestError(
            f"invalid {kind} {value!r}: use 1-128 characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class Head:
    """The classifier head replacing ResNet's `fc`.

    `linear` is `fc = Linear(features, classes)`; `mlp` is
    `fc = Sequential(Linear(features, hidden), ReLU, [Dropout], Linear(hidden, classes))`.
    """

    type: str = "linear"
    hidden: int | None = None
    dropout: bool = False

    def __post_init__(self) -> None:
        if self.type not in ("linear", "mlp"):
            raise ManifestError(f"unknown head type {self.type!r}: expected 'linear' or 'mlp'")
        if self.type == "mlp" and (not isinstance(self.hidden, int) or self.hidden < 1):
            raise ManifestError("an 'mlp' head needs a positive 'hidden' size")


@dataclass(frozen=True)
class Architecture:
    """A torchvision-compatible ResNet: depth plus head."""

    family: str = "resnet"
    depth: int = 50
    head: Head = field(default_factory=Head)

    def __post_init__(self) -> None:
        if self.family != "resnet":
            raise ManifestError(f"unknown architecture family {self.family!r}: only 'resnet' is supported")
        if self.depth not in RESNET_DEPTHS:
            raise ManifestError(f"unsupported ResNet depth {self.depth}: expected one of {RESNET_DEPTHS}")

    @property
    def label(self) -> str:
        return f"resnet{self.depth}"


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the model's input tensor.

    resize_mode `exact` resizes to `size` = (height, width) ignoring aspect ratio (torchvision
    `Resize((h, w))`); `shorter_side` scales the shorter side to `size[0]` (torchvision
    `Resize(n)`). `crop` is a centre crop edge or None. `mean`/`std` are None for no normalization.
    """

    resize_mode: str = "exact"
    size: tuple[int, ...] = (224, 224)
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if self.mean is not None:
            object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        if self.std is not None:
            object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.resize_mode == "exact" and len(self.size) != 2:
            raise ManifestError("resize_mode 'exact' needs size [height, width]")
        if self.resize_mode == "shorter_side" and len(self.size) != 1:
            raise ManifestError("resize_mode 'shorter_side' needs size [n]")
        if self.resize_mode not in ("exact", "shorter_side"):
            raise ManifestError(f"unknown resize_mode {self.resize_mode!r}: expected 'exact' or 'shorter_side'")
        if any(s < 1 or s > 4096 for s in self.size) or (self.crop is not None and not 1 <= self.crop <= 4096):
            raise ManifestError("preprocessing sizes must be between 1 and 4096 pixels")
        if (self.mean is None) != (self.std is None):
            raise ManifestError("give both 'mean' and 'std', or neither")
        if self.mean is not None and (len(self.mean) != 3 or len(self.std or ()) != 3):
            raise ManifestError("'mean' and 'std' need three values (R, G, B)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ManifestError("'std' values must be positive")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ManifestError(f"unknown interpolation {self.interpolation!r}")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the tensor the model sees."""
        if self.crop is not None:
            return (self.crop, self.crop)
        if self.resize_mode == "exact":
            return (self.size[0], self.size[1])
        raise ManifestError("a 'shorter_side' resize needs a crop to give a fixed input size")

    @property
    def fixed_size(self) -> bool:
        """Whether every image reaches the model at one size (an exact resize, or a crop)."""
        return self.crop is not None or self.resize_mode == "exact"

    @property
    def probe_size(self) -> tuple[int, int]:
        """(height, width) to run the network at without an image: the input size when it is fixed,
        else a square of the shorter side (a shorter-side resize without a crop takes any aspect)."""
        return self.output_size if self.fixed_size else (self.size[0], self.size[0])

    @classmethod
    def preset(cls, name: str) -> Preprocessing:
        """`resize224`: what the original SageMaker training used; `imagenet`: torchvision's standard."""
        if name == "resize224":
            return cls(resize_mode="exact", size=(224, 224))
        if name == "imagenet":
            return cls(resize_mode="shorter_side", size=(256,), crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        raise ManifestError(f"unknown preprocessing preset {name!r}: expected 'resize224', 'imagenet' or a .json file")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        if not isinstance(data, dict):
            raise ManifestError("'preprocess' must be an object")
        known = {"resize_mode", "size", "crop", "mean", "std", "interpolation"}
        unknown = set(data) - known
        if unknown:
            raise ManifestError(f"unknown preprocessing keys: {sorted(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"invalid preprocessing: {exc}") from exc


@dataclass(frozen=True)
class WeightsFile:
    """One stored weights file (a variant) with the facts needed to verify it."""

    file: str
    format: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if "/" in self.file or self.file in ("", ".", "..", MANIFEST_FILE):
            raise ManifestError(f"invalid weights file name {self.file!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256 or ""):
            raise ManifestError(f"invalid sha256 for {self.file!r}")
        if not isinstance(self.size, int) or self.size < 0:
            raise ManifestError(f"invalid size for {self.file!r}")


@dataclass(frozen=True)
class Manifest:
    """A published model version. `weights` maps variant name (`fp32`, ...) to its file."""

    name: str
    version: str
    arch: Architecture
    class_names: tuple[str, ...]
    preprocess: Preprocessing
    weights: dict[str, WeightsFile]
    trained: bool
    created_at: str = field(default_factory=lambda: utc_now())
    source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        check_name("name", self.name)
        check_name("version", self.version)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if not self.class_names:
            raise ManifestError("a manifest needs at least one class name")
        if "fp32" not in self.weights:
            raise ManifestError("a manifest needs an 'fp32' weights entry")
        files = [w.file for w in self.weights.values()]
        if len(set(files)) != len(files):
            raise ManifestError("two weights variants share one file")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labels(self) -> tuple[str, ...]:
        """Human labels: `001.Affenpinscher` -> `Affenpinscher`, underscores as spaces."""
        return tuple(display_label(c) for c in self.class_names)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["num_classes"] = self.num_classes
        data["class_names"] = list(self.class_names)
        data["preprocess"]["size"] = list(self.preprocess.size)
        for key in ("mean", "std"):
            if data["preprocess"][key] is not None:
                data["preprocess"][key] = list(data["preprocess"][key])
        order = ["schema_version", "name", "version", "created_at", "arch", "num_classes", "class_names",
                 "preprocess", "weights", "trained", "source", "metrics"]
        return {k: data[k] for k in order}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        schema = data.get("schema_version")
        if schema != SCHEMA_VERSION:
            raise ManifestError(
                f"unsupported manifest schema_version {schema!r}: this breedserve reads {SCHEMA_VERSION}"
            )
        try:
            arch_d = data["arch"]
            head = Head(**arch_d.get("head", {}))
            arch = Architecture(family=arch_d.get("family", "resnet"), depth=arch_d["depth"], head=head)
            weights = {k: WeightsFile(**v) for k, v in data["weights"].items()}
            manifest = cls(
                name=data["name"],
                version=data["version"],
                arch=arch,
                class_names=tuple(data["class_names"]),
                preprocess=Preprocessing.from_dict(data["preprocess"]),
                weights=weights,
                trained=bool(data["trained"]),
                created_at=str(data.get("created_at", "")),
                source=str(data.get("source", "")),
                metrics=dict(data.get("metrics") or {}),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ManifestError(f"malformed manifest: {type(exc).__name__}: {exc}") from exc
        if "num_classes" in data and data["num_classes"] != manifest.num_classes:
            raise ManifestError(
                f"manifest says num_classes={data['num_classes']} but lists {manifest.num_classes} class names"
            )
        return manifest

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            return cls.from_json(Path(path).read_bytes())
        except FileNotFoundError as exc:
            raise ManifestError(f"no manifest at {path}") from exc


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def display_label(class_name: str) -> str:
    """`001.Affenpinscher` -> `Affenpinscher`; `096.Labrador_retriever` -> `Labrador retriever`."""
    name = re.sub(r"^\d+\.", "", class_name)
    return name.replace("_", " ")


def dog_breed_classes() -> tuple[str, ...]:
    """The 133 dogImages class names, in sorted folder order (class index i = i-th name)."""
    text = resources.files("model_store").joinpath("dog_breeds.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def read_class_file(path: Path) -> tuple[str, ...]:
    """One class name per line; blank lines ignored."""
    try:
        names = tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    except OSError as exc:
        raise ManifestError(f"cannot read class file {path}: {exc}") from exc
    if not names:
        raise ManifestError(f"class file {path} lists no classes")
    if len(set(names)) != len(names):
        raise ManifestError(f"class file {path} lists a class twice")
    return names


def outdated_variants(manifest: Manifest, *, expected: Iterable[str] = ()) -> dict[str, str]:
    """variant -> why this breedserve would not publish it so: its format, or its absence.

    The loader refuses a format other than `VARIANT_FORMATS` and falls back to the next variant,
    so a stale one is measured and served as something else without an error. A variant in
    `expected` that is absent counts too, unless the manifest records that its gate refused it
    (`metrics["refused_variants"]`): that is a current publish's verdict (fp32-graph is kept only
    where it runs faster), and publishing again would only refuse it again.
    """
    refused = manifest.metrics.get("refused_variants") or {}
    reasons = {}
    for variant, entry in manifest.weights.items():
        wanted = VARIANT_FORMATS.get(variant)
        if wanted is None:
            reasons[variant] = f"{variant} is not a variant this breedserve serves"
        elif entry.format != wanted:
            reasons[variant] = f"{variant} is {entry.format}, this breedserve serves {wanted}"
    for variant in expected:
        if variant not in manifest.weights and variant not in refused:
            reasons[variant] = f"{variant} is missing"
    return reasons
