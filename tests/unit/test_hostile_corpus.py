"""The hostile corpus (tests/hostile/corpus.py) through the handler, in process, case by case.

Each request is turned into the Function URL event the emulator (and a real Function URL) would
build, handed to the real `Service` with a tiny ResNet-18 published and synced by model_store,
and the answer is turned back into HTTP the same way, so the status, headers and error code
checked here are what a client would see. The same corpus runs through the emulator under the
real runtime client in tests/emulator/test_hostile_emulated.py.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from emulator.events import HttpRequest, function_url_event, function_url_response
from handler.observability import Telemetry
from handler.service import Service
from model_store.manifest import Architecture, Preprocessing
from model_store.preprocess import to_array
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.sync import sync
from tests.hostile.corpus import (
    CORPUS_MAX_BODY_BYTES,
    HostileCase,
    animated_gif,
    cached_corpus,
    check_direct_answer,
    check_http_answer,
    encode,
    exif_rotated_jpeg,
    photo,
)

NAME = "hostile"
CLASSES = ("001.Affenpinscher", "096.Labrador_retriever", "133.Yorkshire_terrier")
EXACT = Preprocessing(resize_mode="exact", size=(64, 64))  # a fixed-size resize, as resize224 (small: fast)
CORPUS = cached_corpus(len(CLASSES))


class Context:
    """What the handler reads of Lambda's context object."""

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def publish_and_sync(tmp_path_factory: pytest.TempPathFactory, version: str, preprocess: Preprocessing) -> Path:
    """A 3-class ResNet-18 published to a file store and synced into a fresh model root."""
    store = tmp_path_factory.mktemp("store").as_uri()
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(7)
    publish_state_dict(build_model(Architecture(depth=18), len(CLASSES)).state_dict(), store, NAME, version,
                       arch=Architecture(depth=18), class_names=CLASSES, preprocess=preprocess, trained=False,
                       source="test", progress=False)
    sync(store, NAME, root, version=version, progress=False)
    return root


def start_service(root: Path, version: str) -> Service:
    """`Service.from_env` as the Lambda init runs it, with the corpus's body limit."""
    environ = {"MODEL_ROOT": str(root), "MODEL_NAME": NAME, "MODEL_VERSION": version,
               "MAX_BODY_BYTES": str(CORPUS_MAX_BODY_BYTES), "OMP_NUM_THREADS": "1"}  # 1: other tests share the CPUs
    telemetry = Telemetry(service=f"hostile-{uuid.uuid4().hex[:8]}", stream=io.StringIO())
    service = Service.from_env(environ, telemetry=telemetry)
    assert service.holder.classifier is not None, service.holder.reason
    return service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The handler's service over the tiny model; Pillow's and torch's globals are put back afterwards."""
    pixels, threads = Image.MAX_IMAGE_PIXELS, torch.get_num_threads()
    try:
        yield start_service(publish_and_sync(tmp_path_factory, "v1", EXACT), "v1")
    finally:
        Image.MAX_IMAGE_PIXELS = pixels
        torch.set_num_threads(threads)


def ask(service: Service, case: HostileCase) -> Any:
    """Send one case; HTTP answers come back as (status, lower-cased headers, body bytes)."""
    if case.direct:
        return service.handle(case.payload, Context())
    headers = list(case.headers)
    if case.body is not None:
        headers.append(("Content-Length", str(len(case.body))))
    request = HttpRequest(case.method, case.target, headers, case.body or b"", "203.0.113.9")
    event = function_url_event(request, request_id=str(uuid.uuid4()), url_id="h" * 32, region="us-east-1",
                               now=time.time())
    response = function_url_response(json.dumps(service.handle(event, Context())).encode())
    return response.status, {k.lower(): v for k, v in response.headers}, response.body


def capture_model_inputs(service: Service, monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Record every batch the model is given (what it actually saw)."""
    classifier = service.holder.get()
    seen: list[np.ndarray] = []
    original = classifier.predict

    def recording(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return original(batch)

    monkeypatch.setattr(classifier, "predict", recording)
    return seen


def case_named(name: str) -> HostileCase:
    return next(case for case in CORPUS if case.name == name)


# --- the corpus itself ----------------------------------------------------------------------------

def test_the_corpus_is_generated_large_and_covers_every_answer() -> None:
    # GIVEN the corpus built by code for a 3-class model
    names = [case.name for case in CORPUS]
    # THEN it has at least 40 distinct cases, every answer class, and each family issue 6 names
    assert len(CORPUS) >= 40 and len(set(names)) == len(names)
    assert {case.status for case in CORPUS} == {200, 204, 400, 403, 404, 405, 413, 415}
    for required in ("jpeg-truncated", "png-truncated", "zero-bytes", "random-bytes", "text-plain", "html", "pdf",
                     "svg", "jpeg-zip-polyglot", "png-bomb-400-megapixels", "png-30000x1", "png-1x1",
                     "png-16-bit-gray", "jpeg-cmyk", "png-palette-transparency", "jpeg-grayscale", "gif-animated",
                     "jpeg-exif-rotated", "jpeg-progressive", "webp-lossy", "bmp", "tiff", "heic",
                     "b64-with-whitespace-and-crlf", "b64-url-safe-alphabet", "b64-padding-in-the-middle",
                     "b64-non-ascii", "json-top-k-is-a-string", "json-extra-field", "json-deeply-nested-array",
                     "json-integer-with-5000-digits", "body-over-the-limit", "jpeg-without-content-type",
                     "content-type-garbage", "top-k-0", "top-k-minus-1", "top-k-1000", "top-k-abc", "get-admin",
                     "put-predict", "head-health", "options-predict-preflight"):
        assert required in names, required
    # AND the bomb is a small file with huge dimensions
    bomb = case_named("png-bomb-400-megapixels").body
    assert bomb is not None and len(bomb) < 100_000


@pytest.fixture(scope="module")
def answers(service: Service) -> dict[str, Any]:
    """The whole corpus sent once, in order, with a plain JPEG's answer before and after it."""
    probe = case_named("jpeg-baseline")
    out: dict[str, Any] = {"probe-before": ask(service, probe)}
    for case in CORPUS:
        out[case.name] = ask(service, case)
    out["probe-after"] = ask(service, probe)
    return out


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_each_case_gets_its_exact_status_and_code(answers: dict[str, Any], case: HostileCase) -> None:
    # GIVEN one hostile request  WHEN the handler answered it
    answer = answers[case.name]
    # THEN exactly the expected status and error code (or well-formed predictions)
    if case.direct:
        check_direct_answer(case, answer)
    else:
        check_http_answer(case, *answer)


def test_no_case_spoils_the_next_request(answers: dict[str, Any]) -> None:
    # GIVEN a plain JPEG's answer before anything hostile was seen
    before = json.loads(answers["probe-before"][2])
    # WHEN the whole corpus has been sent
    after = json.loads(answers["probe-after"][2])
    # THEN the same JPEG gets exactly the same answer, from the same loaded model
    assert after["predictions"] == before["predictions"]
    assert after["model"] == before["model"]


# --- what the model saw -------------------------------------------------------------------------

def test_exif_rotated_jpeg_reaches_the_model_upright(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a 96x48 JPEG (left red, right blue) tagged "rotate 90 degrees clockwise" (orientation 6)
    data = exif_rotated_jpeg(6)
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert stored.size == (96, 48) and upright.size == (48, 96)
    seen = capture_model_inputs(service, monkeypatch)
    # WHEN it is classified
    status, _, _ = ask(service, case_named("jpeg-exif-rotated"))
    # THEN the model's input is the upright picture (red on top, blue below), not the stored one
    assert status == 200 and len(seen) == 1
    spec = service.holder.get().manifest.preprocess
    model_input = seen[0][0]
    assert np.abs(model_input - to_array(upright, spec)).mean() < 0.02
    assert np.abs(model_input - to_array(stored, spec)).mean() > 0.2
    red, blue = model_input[0], model_input[2]
    assert red[:24].mean() > 0.8 and blue[:24].mean() < 0.2  # top rows: red
    assert blue[40:].mean() > 0.8 and red[40:].mean() < 0.2  # bottom rows: blue


def test_animated_gif_sends_its_first_frame_to_the_model(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a GIF whose first frame is red and second blue
    assert case_named("gif-animated").body == animated_gif()
    seen = capture_model_inputs(service, monkeypatch)
    # WHEN it is classified
    status, _, _ = ask(service, case_named("gif-animated"))
    # THEN the model saw red
    assert status == 200 and len(seen) == 1
    means = seen[0][0].mean(axis=(1, 2))
    assert means[0] > 0.85 and means[2] < 0.15


# --- extreme shapes under a shorter-side resize ---------------------------------------------------

@pytest.fixture(scope="module")
def imagenet_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The same tiny model with torchvision's standard preprocessing (shorter side to 256, crop 224)."""
    pixels, threads = Image.MAX_IMAGE_PIXELS, torch.get_num_threads()
    try:
        yield start_service(publish_and_sync(tmp_path_factory, "v-imagenet", Preprocessing.preset("imagenet")),
                            "v-imagenet")
    finally:
        Image.MAX_IMAGE_PIXELS = pixels
        torch.set_num_threads(threads)


@pytest.mark.parametrize("size", [(3000, 1), (1, 3000)])
def test_a_sliver_is_refused_before_the_resize_allocates_it(imagenet_service: Service,
                                                           size: tuple[int, int]) -> None:
    # GIVEN a 3000x1 image: "shorter side to 256" would make it 768000x256 (590 MB of RGB)
    case = HostileCase("sliver", 413, "image_too_large", headers=(("Content-Type", "image/png"),),
                       body=encode(photo(size), "PNG"))
    # WHEN it is classified  THEN 413 image_too_large, with the sizes in the message
    status, headers, body = ask(imagenet_service, case)
    check_http_answer(case, status, headers, body)
    assert "768000x256" in json.loads(body)["error"]["message"] or "256x768000" in json.loads(body)["error"]["message"]


def test_a_long_but_reasonable_panorama_is_still_served(imagenet_service: Service) -> None:
    # GIVEN a 2000x20 strip (resized to 25600x256: 6.5 MP, under the 40 MP limit)
    case = HostileCase("panorama", 200, None, headers=(("Content-Type", "image/png"),),
                       body=encode(photo((2000, 20)), "PNG"), predictions=3)
    # WHEN classified  THEN served
    check_http_answer(case, *ask(imagenet_service, case))
