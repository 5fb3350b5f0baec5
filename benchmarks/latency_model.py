"""The model the latency benchmark measures: the user's synced version, or the demo made on the spot.

By default the benchmark needs no user data: it publishes the deterministic demo ResNet-50
(133 classes, `model_store.demo`) into a file store in its scratch directory and syncs it into a
model root, exactly as `make demo` does, so the weights sit on local disk as they would on EFS.
That scratch directory is new on every run, so the demo is always the current publish.

A version the user names may hold a variant an older breedserve published in a format this one
refuses: the function skips it and serves the next variant, so measuring it under its own name
would report another variant's figures. Such variants are left out, with one line saying so;
the user's model root is never changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.exceptions import LatencyBenchmarkError
from model_store.exceptions import ModelStoreError
from model_store.loader import ONNX_VARIANTS, candidate_variants, read_local_manifest, resolve_version_dir
from model_store.manifest import Manifest, outdated_variants

DEMO_NAME = "dogbreeds"
DEMO_VERSION = "bench-demo"
PUBLISH_LOGGER = "model_store.publish"  # where publish reports its steps
ONNX_ENGINE, TORCH_ENGINE = "onnxruntime", "torch"  # as `Predictor.engine` names them
MIB = 1024 * 1024
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    """A synced model version on local disk, and its manifest.

    `outdated` maps each variant this breedserve refuses to serve (`model_store.manifest.outdated_variants`)
    to the reason; those stay in the manifest (their files are stored all the same) but are
    neither measured nor served.
    """

    root: Path
    name: str
    version: str
    manifest: Manifest
    demo: bool
    outdated: Mapping[str, str] = field(default_factory=dict)

    @property
    def variants(self) -> tuple[str, ...]:
        """Every weights variant the manifest offers and this breedserve serves, fp32 first."""
        usable = (v for v in self.manifest.weights if v not in self.outdated)
        return tuple(sorted(usable, key=lambda v: (v != "fp32", v)))

    @property
    def served_variant(self) -> str:
        """What the function serves without MODEL_VARIANT: the loader's first choice that it can load."""
        for variant in candidate_variants(self.manifest):
            if variant not in self.outdated:
                return variant
        raise LatencyBenchmarkError(f"{self.name}/{self.version}: this breedserve serves none of its variants "
                                    f"({'; '.join(self.outdated.values())}); republish it as a new version")

    def engine(self, variant: str) -> str:
        """What runs `variant` as the loader routes it: ONNX Runtime for the ONNX variants, else torch."""
        if variant in self.outdated:
            raise LatencyBenchmarkError(f"{self.name}/{self.version}: {self.outdated[variant]}; "
                                        "republish it as a new version to measure that variant")
        if variant not in self.manifest.weights:
            raise LatencyBenchmarkError(f"{self.name}/{self.version} has no variant {variant!r}")
        return ONNX_ENGINE if variant in ONNX_VARIANTS else TORCH_ENGINE

    def files_mb(self) -> dict[str, float]:
        """Each variant's weights file in MB (2^20 bytes): stored on EFS, read at a cold start."""
        return {v: round(entry.size / MIB, 3) for v, entry in sorted(self.manifest.weights.items())}

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "arch": self.manifest.arch.label,
                "num_classes": self.manifest.num_classes, "variants": list(self.variants),
                "trained": self.manifest.trained, "demo": self.demo,
                "input": list(self.manifest.preprocess.output_size),
                "formats": {v: e.format for v, e in sorted(self.manifest.weights.items())},
                "files_mb": self.files_mb(), **({"outdated": dict(self.outdated)} if self.outdated else {})}


def existing_model(root: Path, name: str, version: str) -> ModelRef:
    """A version already synced under `root` (what `--model-root/--model-name/--model-version` name)."""
    try:
        directory = resolve_version_dir(root, name, version=version)
        manifest = read_local_manifest(directory, name=name)
    except ModelStoreError as exc:
        raise LatencyBenchmarkError(f"cannot use {name}/{version} under {root}: {exc}") from exc
    model = ModelRef(Path(root), name, manifest.version, manifest, demo=False, outdated=outdated_variants(manifest))
    if model.outdated:
        log.warning("%s/%s under %s: not measuring %s (%s): the function skips it and serves %s; republish the "
                    "model as a new version to measure it", name, manifest.version, root,
                    ", ".join(model.outdated), "; ".join(model.outdated.values()), model.served_variant)
    return model


def demo_model(workdir: Path, say: Callable[[str], None] | None = None) -> ModelRef:
    """Publish the demo model into `workdir/store` and sync it into `workdir/models`.

    Publishing makes the faster variants too (int8 calibration, graph timing), which takes a while;
    `say` receives publish's own step messages meanwhile.
    """
    from model_store.demo import publish_demo
    from model_store.sync import sync

    store = (workdir / "store").absolute()
    root = (workdir / "models").absolute()
    store.mkdir(parents=True, exist_ok=True)
    try:
        with _forwarded(PUBLISH_LOGGER, say):
            publish_demo(store.as_uri(), DEMO_NAME, DEMO_VERSION)
        directory = sync(store.as_uri(), DEMO_NAME, root, version=DEMO_VERSION, progress=False)
        manifest = read_local_manifest(directory, name=DEMO_NAME)
    except ModelStoreError as exc:
        raise LatencyBenchmarkError(f"cannot make the demo model in {workdir}: {exc}") from exc
    return ModelRef(root, DEMO_NAME, DEMO_VERSION, manifest, demo=True)


class _SayHandler(logging.Handler):
    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        self.say(record.getMessage())


@contextmanager
def _forwarded(logger_name: str, say: Callable[[str], None] | None) -> Iterator[None]:
    """Pass a logger's INFO messages to `say` for the duration of a block."""
    if say is None:
        yield
        return
    logger = logging.getLogger(logger_name)
    handler, level = _SayHandler(say), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
