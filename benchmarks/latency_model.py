"""The model the latency benchmark measures: the user's synced version, or the demo made on the spot.

By default the benchmark needs no user data: it publishes the deterministic demo ResNet-50
(133 classes, `model_store.demo`) into a file store in its scratch directory and syncs it into a
model root, exactly as `make demo` does, so the weights sit on local disk as they would on EFS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.exceptions import LatencyBenchmarkError
from model_store.exceptions import ModelStoreError
from model_store.loader import ONNX_VARIANTS, choose_variant, read_local_manifest, resolve_version_dir
from model_store.manifest import Manifest

DEMO_NAME = "dogbreeds"
DEMO_VERSION = "bench-demo"
PUBLISH_LOGGER = "model_store.publish"  # where publish reports its steps
ONNX_ENGINE, TORCH_ENGINE = "onnxruntime", "torch"  # as `Predictor.engine` names them
MIB = 1024 * 1024


@dataclass(frozen=True)
class ModelRef:
    """A synced model version on local disk, and its manifest."""

    root: Path
    name: str
    version: str
    manifest: Manifest
    demo: bool

    @property
    def variants(self) -> tuple[str, ...]:
        """Every weights variant the manifest offers, fp32 first."""
        return tuple(sorted(self.manifest.weights, key=lambda v: (v != "fp32", v)))

    @property
    def served_variant(self) -> str:
        """What the function serves without MODEL_VARIANT: the loader's choice on this machine."""
        return choose_variant(self.manifest)

    def engine(self, variant: str) -> str:
        """What runs `variant` as the loader routes it: ONNX Runtime for the ONNX variants, else torch."""
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
                "files_mb": self.files_mb()}


def existing_model(root: Path, name: str, version: str) -> ModelRef:
    """A version already synced under `root` (what `--model-root/--model-name/--model-version` name)."""
    try:
        directory = resolve_version_dir(root, name, version=version)
        manifest = read_local_manifest(directory, name=name)
    except ModelStoreError as exc:
        raise LatencyBenchmarkError(f"cannot use {name}/{version} under {root}: {exc}") from exc
    return ModelRef(Path(root), name, manifest.version, manifest, demo=False)


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
