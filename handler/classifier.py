"""Bytes in, ranked breeds out: load, decode, preprocess, predict, postprocess, each step timed.

`Classifier` knows nothing of Lambda: the handler, the benchmarks and the tests all drive it the
same way. The manifest beside the weights supplies the labels and the preprocessing, so serving
cannot drift from training. Every step works on numpy arrays and the model is a
`model_store.predictor.Predictor`, so this module imports neither torch nor ONNX Runtime: the
loader imports the one engine the served variant needs (ONNX Runtime for `int8` and
`fp32-graph`, torch only for `fp32`), and an ONNX-served runtime never pays for `import torch`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from handler.config import DEFAULT_MAX_IMAGE_PIXELS
from handler.decode import Decoded, decode
from handler.exceptions import BadRequestError, HandlerError, InternalError, PayloadTooLargeError
from model_store.loader import load
from model_store.manifest import Manifest
from model_store.predictor import Predictor
from model_store.preprocess import draft_size, resized_size, to_array

UNTRAINED_WARNING = "model is untrained (demo weights): predictions are meaningless"
DEFAULT_TOP_K = 5
_EWMA_WEIGHT = 0.2
BATCH_WORKERS = 2
DEFAULT_BATCH_CHUNK = 4  # ONNX Runtime int8, 2 threads, ms per image (p10): 16.8 at 1, 14.4 at 4, 14.7 at 8


class Deadline(Protocol):
    """Something that refuses work which would not finish in time (the Lambda context, in the handler)."""

    def check(self, expected_ms: float) -> None:
        """Raise `DeadlineExceededError` when `expected_ms` more work would overrun the deadline."""


def elapsed_ms(start: float) -> float:
    """Milliseconds since `start` (a `time.perf_counter()` value), rounded for JSON."""
    return round((time.perf_counter() - start) * 1000.0, 3)


class Classifier:
    """One loaded model version and the four serving steps around it.

    >>> clf = Classifier.from_root("/mnt/models", "dogbreeds", alias="live")
    >>> clf.classify(open("dog.jpg", "rb").read(), top_k=3)["predictions"][0]["label"]
    'Labrador retriever'
    """

    def __init__(
        self,
        predictor: Predictor,
        manifest: Manifest,
        variant: str = "fp32",
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        directory: Path | None = None,
        batch_chunk: int = DEFAULT_BATCH_CHUNK,
    ) -> None:
        if batch_chunk < 1:
            raise ValueError(f"batch_chunk must be at least 1, got {batch_chunk}")
        self.batch_chunk = batch_chunk
        self.predictor = predictor
        self.manifest = manifest
        self.variant = variant
        self.directory = directory
        self.max_image_pixels = max_image_pixels
        self.labels: tuple[str, ...] = manifest.labels
        self.draft: tuple[int, int] = draft_size(manifest.preprocess)
        self._ms_per_image: float | None = None
        self._batch_pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_root(
        cls,
        root: str | Path,
        name: str,
        version: str | None = None,
        alias: str | None = None,
        variant: str | None = None,
        *,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        threads: int | None = None,
    ) -> Classifier:
        """Load a version from a model root (the EFS mount); raises `model_store` errors as they come.

        `threads` is the engine's intra-op thread count (None: every CPU this process may use).
        """
        loaded = load(Path(root), name, version=version, alias=alias, variant=variant, threads=threads)
        return cls(loaded.predictor, loaded.manifest, loaded.variant,
                   max_image_pixels=max_image_pixels, directory=loaded.directory)

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def engine(self) -> str:
        """What runs the model: `onnxruntime` or `torch`."""
        return self.predictor.engine

    @property
    def identity(self) -> dict[str, str]:
        """What every answer says about the model that produced it."""
        return {"name": self.manifest.name, "version": self.manifest.version, "variant": self.variant}

    def describe(self) -> dict[str, Any]:
        """The `GET /model` body: enough for a client to know what it is talking to."""
        manifest = self.manifest
        preprocess = manifest.to_dict()["preprocess"]
        return {
            **self.identity,
            "engine": self.engine,
            "arch": manifest.arch.label,
            "head": {"type": manifest.arch.head.type, "hidden": manifest.arch.head.hidden},
            "num_classes": manifest.num_classes,
            "preprocess": preprocess,
            "trained": manifest.trained,
            "variants": sorted(manifest.weights),
            "created_at": manifest.created_at,
            "metrics": manifest.metrics,
        }

    def check_top_k(self, top_k: object) -> int:
        """`top_k` must be an integer from 1 to the number of classes; None means 5 (or all, if fewer)."""
        if top_k is None:
            return min(DEFAULT_TOP_K, self.num_classes)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.num_classes:
            raise BadRequestError(
                f"top_k must be an integer from 1 to {self.num_classes}, got {_short(top_k)}", code="bad_top_k"
            )
        return top_k

    def decode(self, data: bytes) -> Decoded:
        """Bytes -> RGB image (see `handler.decode`), JPEGs reduced toward the model's input size.

        A shorter-side resize scales a 30000x1 image to 7680000x256 (6 GB of RGB): the resized
        size is held to the same pixel limit as the image itself, before anything is allocated.
        """
        decoded = decode(data, draft=self.draft, max_pixels=self.max_image_pixels)
        image = decoded.image
        width, height = resized_size(image.width, image.height, self.manifest.preprocess)
        if width * height > self.max_image_pixels:
            raise PayloadTooLargeError(
                f"a {image.width}x{image.height} image would be resized to {width}x{height} pixels; "
                f"the limit is {self.max_image_pixels:,}", code="image_too_large")
        return decoded

    def preprocess(self, decoded: Decoded) -> np.ndarray:
        """Decoded image -> float32 batch of one, `[1, 3, H, W]`, as the manifest's preprocessing says.

        Bit for bit torchvision's transforms, except for a JPEG decoded at reduced size: its
        pixels already differ from a full decode's, and only the crop is resampled (`to_array`).
        """
        return self._array(decoded)[None]

    def _array(self, decoded: Decoded) -> np.ndarray:
        return to_array(decoded.image, self.manifest.preprocess, exact=not decoded.reduced)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """`[N, 3, H, W]` -> logits `[N, num_classes]`; also feeds the running per-image time estimate."""
        start = time.perf_counter()
        logits = self.predictor(batch)
        per_image = (time.perf_counter() - start) * 1000.0 / max(1, batch.shape[0])
        previous = self._ms_per_image
        self._ms_per_image = per_image if previous is None else (1 - _EWMA_WEIGHT) * previous + _EWMA_WEIGHT * per_image
        if getattr(logits, "ndim", None) != 2 or logits.shape[0] != batch.shape[0]:
            shape = getattr(logits, "shape", type(logits).__name__)
            raise InternalError(f"the model gave logits of shape {shape} for a batch of {batch.shape[0]}")
        return logits

    def expected_inference_ms(self, batch_size: int = 1) -> float:
        """What inference on `batch_size` images is expected to take (0 before the first run)."""
        return (self._ms_per_image or 0.0) * batch_size

    def warm_up(self) -> float:
        """Run one throwaway input before the first request; returns ms.

        It seeds the per-image estimate the deadline check needs, and moves first-run set-up out of
        the first request (ONNX Runtime allocates its buffers on a session's first run, torch starts
        its thread pool and builds oneDNN primitives). One run is enough: with ONNX Runtime
        (ResNet-50, int8 and fp32, 2 threads) runs two to eight after a fresh session took the
        same time within the machine's noise (the TorchScript graph this once served optimized on
        its second run and needed two).
        Only a classifier that has never run needs it; later calls return 0 at once.
        """
        if self._ms_per_image is not None:
            return 0.0
        height, width = self.manifest.preprocess.output_size
        start = time.perf_counter()
        self.predict(np.zeros((1, 3, height, width), dtype=np.float32))
        return elapsed_ms(start)

    def postprocess(self, logits_row: np.ndarray, top_k: int = 5, include_logits: bool = False) -> dict[str, Any]:
        """One row of logits -> the answer body: softmax over all classes, top `top_k` by probability.

        The softmax is computed in float64 after subtracting the largest logit (no overflow, and
        probabilities far below float32's resolution stay distinguishable). Equal probabilities
        are ranked by class index, lowest first (a stable sort), so the same logits always give
        the same answer whatever the engine.
        """
        raw = np.asarray(logits_row).reshape(-1)
        row = raw.astype(np.float64)
        if row.size != self.num_classes:
            raise InternalError(f"the model gave {row.size} scores for {self.num_classes} classes")
        if not np.isfinite(row).all():
            raise InternalError("the model produced non-finite scores")
        exponentials = np.exp(row - row.max())
        probabilities = exponentials / exponentials.sum()
        ranked = np.argsort(-probabilities, kind="stable")[:min(top_k, self.num_classes)]
        body: dict[str, Any] = {
            "predictions": [
                {"index": int(i), "label": self.labels[int(i)], "probability": float(probabilities[i])}
                for i in ranked
            ],
            "model": self.identity,
        }
        if not self.manifest.trained:
            body["warning"] = UNTRAINED_WARNING
        if include_logits:
            body["logits"] = [float(x) for x in raw.tolist()]
        return body

    def classify(
        self, data: bytes, top_k: int | None = None, include_logits: bool = False, deadline: Deadline | None = None
    ) -> dict[str, Any]:
        """Image bytes -> answer body with `timing_ms` for decode, preprocess, inference and total.

        `timing_ms.variant` names the weights variant that ran (as `model.variant` does).
        """
        top_k = self.check_top_k(top_k)
        start = time.perf_counter()
        photo = self.decode(data)
        decoded = time.perf_counter()
        batch = self.preprocess(photo)
        preprocessed = time.perf_counter()
        if deadline is not None:
            deadline.check(self.expected_inference_ms(1))
        logits = self.predict(batch)
        inferred = time.perf_counter()
        body = self.postprocess(logits[0], top_k, include_logits)
        body["timing_ms"] = {
            "decode": _ms(decoded - start),
            "preprocess": _ms(preprocessed - decoded),
            "inference": _ms(inferred - preprocessed),
            "total": elapsed_ms(start),
            "variant": self.variant,
        }
        return body

    def classify_batch(
        self,
        items: Sequence[bytes],
        top_k: int | None = None,
        include_logits: bool = False,
        deadline: Deadline | None = None,
    ) -> list[dict[str, Any] | HandlerError]:
        """Several images, decoded two at a time, then run `batch_chunk` at a time; results in input order.

        With ONNX Runtime on 2 vCPUs the forward pass is compute-bound on both cores and a larger
        batch buys little, so the gain is in decoding: two worker threads decode and preprocess
        (Pillow and numpy release the GIL) while a single request leaves one core idle for it. The
        model runs only once every image is ready: decoding during a forward pass steals a core
        from one of its two threads, and every operator waits for the slower one (8 x 1 MP,
        in-process, p10: 25.7 ms per image running each image as soon as it was decoded, 22.8
        this way; overlapping in chunks of four was no better than this, within the noise).
        The deadline is checked before each chunk.

        An image that cannot be decoded gets its `HandlerError` in its slot and the others are still
        answered. Each answer's `timing_ms` has its own decode and preprocess, `inference` = the
        forward pass of the chunk it ran in, and `total` = those plus its postprocess (its own work,
        not the time it waited for a worker or for other chunks).
        """
        top_k = self.check_top_k(top_k)
        pool = self._batch_workers()
        futures = [pool.submit(self._prepare, data) for data in items]
        results: list[dict[str, Any] | HandlerError | None] = [None] * len(futures)
        ready: list[_Prepared] = []
        try:
            for slot, future in enumerate(futures):
                try:
                    array, decode_ms, preprocess_ms = future.result()
                except HandlerError as exc:
                    results[slot] = exc
                    continue
                ready.append(_Prepared(slot, array, decode_ms, preprocess_ms))
        finally:
            for future in futures:  # after a bug: stop decoding what will not be answered
                future.cancel()
        for first in range(0, len(ready), self.batch_chunk):
            self._run_chunk(ready[first:first + self.batch_chunk], results, top_k, include_logits, deadline)
        return [r if r is not None else InternalError("an image of the batch was never answered") for r in results]

    def _run_chunk(
        self,
        chunk: Sequence[_Prepared],
        results: list[dict[str, Any] | HandlerError | None],
        top_k: int,
        include_logits: bool,
        deadline: Deadline | None,
    ) -> None:
        """One forward pass over the prepared images of `chunk`, answers into their slots."""
        if deadline is not None:
            deadline.check(self.expected_inference_ms(len(chunk)))
        start = time.perf_counter()
        logits = self.predict(np.stack([item.array for item in chunk]))
        inference_ms = elapsed_ms(start)
        for row, item in enumerate(chunk):
            post_start = time.perf_counter()
            body = self.postprocess(logits[row], top_k, include_logits)
            body["timing_ms"] = {
                "decode": item.decode_ms,
                "preprocess": item.preprocess_ms,
                "inference": inference_ms,
                "chunk_size": len(chunk),  # images that shared this forward pass (and its inference ms)
                "total": round(item.decode_ms + item.preprocess_ms + inference_ms + elapsed_ms(post_start), 3),
                "variant": self.variant,
            }
            results[item.slot] = body

    def _prepare(self, data: bytes) -> tuple[np.ndarray, float, float]:
        """Bytes -> `[3, H, W]` float32, with decode and preprocess ms (runs on a batch worker)."""
        start = time.perf_counter()
        photo = self.decode(data)
        decoded = time.perf_counter()
        array = self._array(photo)
        return array, _ms(decoded - start), elapsed_ms(decoded)

    def _batch_workers(self) -> ThreadPoolExecutor:
        """The batch decode/preprocess threads, made on the first batch (single requests never need them).

        Two: what a 2-vCPU function can run at once. More would only queue behind the model's own
        threads.
        """
        if self._batch_pool is None:
            self._batch_pool = ThreadPoolExecutor(max_workers=BATCH_WORKERS, thread_name_prefix="batch-decode")
        return self._batch_pool


@dataclass(frozen=True)
class _Prepared:
    """A batch image ready for the model: its slot in the answer and its own step times."""

    slot: int
    array: np.ndarray
    decode_ms: float
    preprocess_ms: float


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _short(value: object) -> str:
    """A value for an error message, cut short: never echo a large payload back."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
