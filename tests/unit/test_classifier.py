"""The Classifier's steps with a tiny colour model whose right answers are known in advance.

The models here are numpy predictors (the `Predictor` interface), so these tests import no engine.
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handler.classifier import UNTRAINED_WARNING, Classifier
from handler.decode import Decoded
from handler.exceptions import BadRequestError, DeadlineExceededError, HandlerError, InternalError
from model_store.manifest import Architecture, Manifest, Preprocessing, WeightsFile
from model_store.preprocess import to_array

CLASSES = ("001.Red_setter", "002.Green_dog", "003.Blue_heeler")
RED, GREEN, BLUE = (230, 10, 10), (10, 230, 10), (10, 10, 230)


class MeanColour:
    """logits = scale * mean(R, G, B): a red image is class 0, green 1, blue 2. Counts its batches."""

    engine = "numpy"
    threads = 1

    def __init__(self, scale: float = 10.0) -> None:
        self.scale = scale
        self.batches: list[int] = []
        self.inputs: list[np.ndarray] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(int(batch.shape[0]))
        self.inputs.append(batch)
        return (self.scale * batch.mean(axis=(2, 3))).astype(np.float32)


class Constant:
    """Always the same logits row (to feed postprocess edge cases through the real path)."""

    engine = "numpy"
    threads = 1

    def __init__(self, row: list[float]) -> None:
        self.row = np.asarray([row], dtype=np.float32)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.repeat(self.row, batch.shape[0], axis=0)


def manifest(trained: bool = True) -> Manifest:
    return Manifest(
        name="tiny", version="v1", arch=Architecture(depth=18), class_names=CLASSES,
        preprocess=Preprocessing(resize_mode="exact", size=(32, 32)),
        weights={"fp32": WeightsFile("model.safetensors", "safetensors", "0" * 64, 1)}, trained=trained,
    )


def png(colour: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class RefuseAll:
    """A deadline that has run out: records what it was asked, then refuses."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def check(self, expected_ms: float) -> None:
        self.asked.append(expected_ms)
        raise DeadlineExceededError("no time left")


@pytest.fixture
def classifier() -> Classifier:
    return Classifier(MeanColour(), manifest(), "fp32")


def test_classify_ranks_the_right_class_first(classifier: Classifier) -> None:
    # GIVEN a red photo
    # WHEN classified with top_k=3
    body = classifier.classify(png(RED), top_k=3)
    # THEN red comes first, labels are display names, probabilities are sorted and sum to 1
    predictions = body["predictions"]
    assert predictions[0]["index"] == 0
    assert predictions[0]["label"] == "Red setter"
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert math.isclose(sum(probabilities), 1.0, rel_tol=1e-9)
    assert body["model"] == {"name": "tiny", "version": "v1", "variant": "fp32"}
    assert set(body["timing_ms"]) == {"decode", "preprocess", "inference", "total", "variant"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0
    assert "warning" not in body and "logits" not in body


@pytest.mark.parametrize("colour, index", [(GREEN, 1), (BLUE, 2)])
def test_each_colour_gets_its_class(classifier: Classifier, colour: tuple[int, int, int], index: int) -> None:
    assert classifier.classify(png(colour), top_k=1)["predictions"][0]["index"] == index


def test_top_k_one_has_probability_below_one(classifier: Classifier) -> None:
    # GIVEN top_k=1  WHEN classified  THEN one prediction whose probability is a softmax share (< 1)
    predictions = classifier.classify(png(RED), top_k=1)["predictions"]
    assert len(predictions) == 1 and 0 < predictions[0]["probability"] < 1


def test_logits_are_the_models_raw_output(classifier: Classifier) -> None:
    # GIVEN include_logits  WHEN a blue image is classified
    body = classifier.classify(png(BLUE), top_k=2, include_logits=True)
    # THEN the raw logits (one per class) come back: scale * mean colour / 255
    assert body["logits"] == pytest.approx([10 * 10 / 255, 10 * 10 / 255, 10 * 230 / 255], rel=1e-5)


def test_untrained_model_carries_the_warning() -> None:
    # GIVEN a manifest marked trained: false  WHEN classifying  THEN the warning is in the body
    body = Classifier(MeanColour(), manifest(trained=False)).classify(png(RED))
    assert body["warning"] == UNTRAINED_WARNING


def test_default_top_k_is_capped_at_the_class_count(classifier: Classifier) -> None:
    # GIVEN a 3-class model (fewer than the default 5)  WHEN top_k is not given
    predictions = classifier.classify(png(GREEN))["predictions"]
    # THEN every class is listed once
    assert sorted(p["index"] for p in predictions) == [0, 1, 2]


@pytest.mark.parametrize("top_k", [0, -1, 4, 1000, True, "2", 2.0])
def test_bad_top_k(classifier: Classifier, top_k: object) -> None:
    # GIVEN a top_k that is not an integer in 1..3  WHEN classifying  THEN bad_top_k naming the range
    with pytest.raises(BadRequestError) as caught:
        classifier.classify(png(RED), top_k=top_k)  # type: ignore[arg-type]
    assert caught.value.code == "bad_top_k" and "1 to 3" in caught.value.message


def test_preprocess_gives_a_batch_of_one(classifier: Classifier) -> None:
    array = classifier.preprocess(Decoded(Image.new("RGB", (100, 50), RED), reduced=False))
    assert isinstance(array, np.ndarray) and array.shape == (1, 3, 32, 32) and array.dtype == np.float32


def test_only_a_jpeg_decoded_at_reduced_size_skips_the_bit_exact_resize() -> None:
    # GIVEN a classifier whose preprocessing has a centre crop inside the resized image (imagenet)
    classifier = Classifier(MeanColour(), replace(manifest(), preprocess=Preprocessing.preset("imagenet")))
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (700, 1000, 3), np.uint8))
    small = photo.resize((400, 280))
    # WHEN a large JPEG (decoded at 1/2 scale) and a small one (decoded in full) are decoded and preprocessed
    large, full = classifier.decode(encode_jpeg(photo)), classifier.decode(encode_jpeg(small))
    # THEN only the reduced one takes the crop-only resample, and both are the model's input
    assert large.reduced and large.image.size == (500, 350) and not full.reduced
    spec = classifier.manifest.preprocess
    assert np.array_equal(classifier.preprocess(full)[0], to_array(full.image, spec))
    assert np.array_equal(classifier.preprocess(large)[0], to_array(large.image, spec, exact=False))
    assert classifier.preprocess(large).shape == (1, 3, 224, 224)


def test_the_model_gets_float32_batches_and_the_batch_path_matches_the_single_one() -> None:
    # GIVEN a model that records what it is given
    model = MeanColour()
    classifier = Classifier(model, manifest())
    # WHEN the same images are classified one by one and as a batch
    single = [classifier.classify(png(c), top_k=3, include_logits=True) for c in (RED, BLUE)]
    classifier.batch_chunk = 2
    batch = classifier.classify_batch([png(RED), png(BLUE)], top_k=3, include_logits=True)
    # THEN every input was a float32 [N, 3, 32, 32] array, and the answers agree
    assert [(x.shape, x.dtype) for x in model.inputs] == [((1, 3, 32, 32), np.float32)] * 2 + [
        ((2, 3, 32, 32), np.float32)]
    for one, many in zip(single, batch, strict=True):
        assert isinstance(many, dict)
        assert one["predictions"] == many["predictions"] and one["logits"] == many["logits"]


def test_softmax_is_exact_and_stable_for_large_logits() -> None:
    # GIVEN logits whose exponentials overflow float64 unless the largest is subtracted first
    body = Classifier(Constant([1000.0, 999.0, 990.0]), manifest()).classify(png(RED), top_k=3)
    # THEN the probabilities are the softmax, computed without overflow, and sum to 1
    expected = np.exp(np.array([0.0, -1.0, -10.0]))
    expected /= expected.sum()
    assert [p["index"] for p in body["predictions"]] == [0, 1, 2]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(expected.tolist(), rel=1e-12)


@pytest.mark.parametrize("row, order", [
    ([1.0, 1.0, 1.0], [0, 1, 2]),
    ([0.0, 2.0, 2.0], [1, 2, 0]),
    ([5.0, -1.0, 5.0], [0, 2, 1]),
])
def test_equal_probabilities_are_ranked_by_class_index(row: list[float], order: list[int]) -> None:
    # GIVEN logits with ties  WHEN classified (repeatedly)
    classifier = Classifier(Constant(row), manifest())
    answers = [[p["index"] for p in classifier.classify(png(RED), top_k=3)["predictions"]] for _ in range(3)]
    # THEN tied classes come lowest index first, every time
    assert answers == [order] * 3


def test_a_model_answering_the_wrong_batch_size_is_an_internal_error() -> None:
    # GIVEN a model that answers one row whatever the batch  WHEN two images are classified together
    class OneRow(Constant):
        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return self.row

    with pytest.raises(InternalError, match=r"shape \(1, 3\) for a batch of 2"):
        Classifier(OneRow([1.0, 2.0, 3.0]), manifest(), batch_chunk=2).classify_batch([png(RED), png(BLUE)])


def test_the_classifier_imports_no_engine() -> None:
    # GIVEN this module's imports (the classifier, Pillow, numpy, model_store's manifest and preprocessing)
    # THEN neither torch nor ONNX Runtime came with them: only a loader builds an engine
    code = ("import sys, handler.classifier; "
            "print([m for m in ('torch', 'onnxruntime') if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("row", [[1.0, float("nan"), 0.0], [float("inf"), 0.0, 0.0]])
def test_non_finite_scores_are_an_internal_error(row: list[float]) -> None:
    # GIVEN a model that outputs NaN or infinity
    # WHEN classifying  THEN a 500 whose message names the problem, never NaN in JSON
    with pytest.raises(InternalError, match="non-finite"):
        Classifier(Constant(row), manifest()).classify(png(RED))


def test_wrong_number_of_scores_is_an_internal_error() -> None:
    with pytest.raises(InternalError, match="2 scores for 3 classes"):
        Classifier(Constant([1.0, 2.0]), manifest()).classify(png(RED))


def test_batch_runs_in_chunks_and_keeps_order() -> None:
    # GIVEN red, garbage, blue, green and red images, and chunks of two
    model = MeanColour()
    classifier = Classifier(model, manifest(), batch_chunk=2)
    # WHEN classified as a batch
    results = classifier.classify_batch([png(RED), b"not an image", png(BLUE), png(GREEN), png(RED)], top_k=2)
    # THEN the four good images ran two by two (then the rest), results are in input order,
    # and the bad image's slot holds its error
    assert model.batches == [2, 2]
    assert [r.code if isinstance(r, HandlerError) else r["predictions"][0]["index"] for r in results] == \
        [0, "not_an_image", 2, 1, 0]
    answers = [r for r in results if isinstance(r, dict)]
    # AND each answer's inference is its own chunk's forward pass
    inference = [a["timing_ms"]["inference"] for a in answers]
    assert inference[0] == inference[1] and inference[2] == inference[3]
    assert all(len(a["predictions"]) == 2 for a in answers)
    for answer in answers:
        timing = answer["timing_ms"]
        assert timing["total"] >= timing["decode"] + timing["preprocess"] + timing["inference"]


def test_batch_decodes_on_two_worker_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a decode that only returns once two decodes are running at the same time
    classifier = Classifier(MeanColour(), manifest())
    both = threading.Barrier(2, timeout=10)
    threads: set[str] = set()
    decode = classifier.decode

    def paired(data: bytes) -> Image.Image:
        threads.add(threading.current_thread().name)
        both.wait()
        return decode(data)

    monkeypatch.setattr(classifier, "decode", paired)
    # WHEN four images are classified as a batch (a single worker would break the barrier)
    results = classifier.classify_batch([png(RED), png(GREEN), png(BLUE), png(RED)], top_k=1)
    # THEN they were decoded two at a time, off the calling thread, and all answered in order
    assert [r["predictions"][0]["index"] for r in results if isinstance(r, dict)] == [0, 1, 2, 0]
    assert len(threads) == 2 and threading.current_thread().name not in threads


def test_batch_workers_are_made_once_and_only_for_batches(classifier: Classifier) -> None:
    # GIVEN single requests  THEN no worker threads exist
    classifier.classify(png(RED))
    assert classifier._batch_pool is None
    # WHEN two batches run  THEN they share one pool
    classifier.classify_batch([png(RED)])
    pool = classifier._batch_pool
    classifier.classify_batch([png(BLUE), png(GREEN)])
    assert pool is not None and classifier._batch_pool is pool


def test_a_bug_while_decoding_a_batch_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a decode step that fails with something other than a HandlerError (a bug)
    model = MeanColour()
    classifier = Classifier(model, manifest())

    def broken(data: bytes) -> Image.Image:
        raise RuntimeError("bug")

    monkeypatch.setattr(classifier, "decode", broken)
    # WHEN a batch runs  THEN the bug comes out (the service answers 500) and the model never ran
    with pytest.raises(RuntimeError, match="bug"):
        classifier.classify_batch([png(RED), png(BLUE)])
    assert model.batches == []


def test_batch_chunk_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_chunk must be at least 1"):
        Classifier(MeanColour(), manifest(), batch_chunk=0)


def test_batch_of_only_bad_images_runs_nothing() -> None:
    model = MeanColour()
    results = Classifier(model, manifest()).classify_batch([b"x", b""])
    assert model.batches == [] and all(isinstance(r, HandlerError) for r in results)


def test_a_spent_deadline_stops_before_inference() -> None:
    # GIVEN a deadline that has run out
    model = MeanColour()
    classifier = Classifier(model, manifest())
    deadline = RefuseAll()
    # WHEN classifying  THEN the deadline error comes out and the model never ran
    with pytest.raises(DeadlineExceededError):
        classifier.classify(png(RED), deadline=deadline)
    with pytest.raises(DeadlineExceededError):
        classifier.classify_batch([png(RED)], deadline=deadline)
    assert model.batches == []
    assert deadline.asked == [0.0, 0.0]  # nothing measured yet: no inference time expected


class RefuseAfter:
    """A deadline that allows `allowed` checks, then refuses."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.asked: list[float] = []

    def check(self, expected_ms: float) -> None:
        self.asked.append(expected_ms)
        if len(self.asked) > self.allowed:
            raise DeadlineExceededError("no time left")


def test_the_deadline_is_checked_before_each_chunk() -> None:
    # GIVEN chunks of two and a deadline that runs out after the first chunk
    model = MeanColour()
    classifier = Classifier(model, manifest(), batch_chunk=2)
    deadline = RefuseAfter(1)
    # WHEN five images are classified  THEN the first chunk ran, the second was refused
    with pytest.raises(DeadlineExceededError):
        classifier.classify_batch([png(RED)] * 5, deadline=deadline)
    assert model.batches == [2]
    # AND the second check expected two images' worth of the time the first chunk took
    assert deadline.asked[0] == 0.0 and deadline.asked[1] == pytest.approx(classifier.expected_inference_ms(2))


def test_warm_up_seeds_the_inference_estimate(classifier: Classifier) -> None:
    # GIVEN a fresh classifier (no estimate)
    assert classifier.expected_inference_ms(4) == 0.0
    # WHEN warmed up  THEN the per-image estimate exists and scales with the batch
    classifier.warm_up()
    one = classifier.expected_inference_ms(1)
    assert one > 0 and classifier.expected_inference_ms(4) == pytest.approx(4 * one)


def test_describe_is_the_model_endpoint_body(classifier: Classifier) -> None:
    info = classifier.describe()
    assert info["arch"] == "resnet18" and info["num_classes"] == 3 and info["trained"] is True
    assert info["preprocess"]["size"] == [32, 32] and info["variant"] == "fp32" and info["variants"] == ["fp32"]
    assert info["engine"] == "numpy"
