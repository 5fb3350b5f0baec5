"""The handler end to end, in process, with a tiny ResNet-18 published and synced by model_store.

The model root is real (publish to a file store, sync into a temporary root, load with checksum),
so these tests cover the whole request path except the Lambda runtime client itself.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from botocore.stub import Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from handler.classifier import UNTRAINED_WARNING, Classifier
from handler.config import Settings
from handler.holder import ModelHolder
from handler.observability import Telemetry
from handler.s3 import S3ImageFetcher
from handler.service import Service
from model_store.manifest import Architecture, Preprocessing
from model_store.predictor import TorchPredictor, available_cpus
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.store import open_store, write_alias
from model_store.sync import sync

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "tests" / "events"
NAME = "tiny"
ARCH = Architecture(depth=18)
CLASSES = ("001.Affenpinscher", "096.Labrador_retriever", "133.Yorkshire_terrier")
PREPROCESS = Preprocessing(resize_mode="exact", size=(64, 64))  # small input: fast tests, same code path
LABELS = {"Affenpinscher", "Labrador retriever", "Yorkshire terrier"}


class FakeClock:
    """The backoff clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Context:
    """The parts of Lambda's context object the handler reads."""

    def __init__(self, remaining_ms: int = 30_000, request_id: str | None = None) -> None:
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A file store with v1 (untrained), v2 and v3 (trained) of a 3-class ResNet-18 on 64x64 inputs."""
    uri = tmp_path_factory.mktemp("store").as_uri()
    for seed, (version, trained) in enumerate((("v1", False), ("v2", True), ("v3", True))):
        torch.manual_seed(seed)
        publish_state_dict(build_model(ARCH, len(CLASSES)).state_dict(), uri, NAME, version, arch=ARCH,
                           class_names=CLASSES, preprocess=PREPROCESS, trained=trained, source="test",
                           progress=False)
    return uri


@pytest.fixture(scope="module")
def shared_root(store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root with v1, for the tests that do not change what is on disk."""
    root = tmp_path_factory.mktemp("models")
    sync(store, NAME, root, version="v1", progress=False)
    return root


@pytest.fixture(scope="module")
def loaded(shared_root: Path) -> Classifier:
    """v1 loaded once (checksum and all) and handed to every service that does not test loading."""
    return Classifier.from_root(shared_root, NAME, version="v1")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def log_stream() -> io.StringIO:
    return io.StringIO()


def make_service(root: Path, log_stream: io.StringIO, clock: FakeClock | None = None,
                 classifier: Classifier | None = None, **env: str) -> Service:
    """A service as `Service.from_env` builds it, with a test clock, log stream and (optionally) model."""
    environ = {"MODEL_ROOT": str(root), "MODEL_NAME": NAME, **env}
    if "MODEL_ALIAS" not in env:
        environ.setdefault("MODEL_VERSION", "v1")
    settings_ = Settings.from_env(environ)
    telemetry = Telemetry(service=f"breedserve-test-{uuid.uuid4().hex[:8]}", stream=log_stream)
    load = None if classifier is None else (lambda version=None: classifier)
    holder = ModelHolder(settings_, telemetry, load=load, clock=clock or FakeClock())
    holder.start()
    return Service(settings_, holder, telemetry)


@pytest.fixture
def service(shared_root: Path, loaded: Classifier, log_stream: io.StringIO) -> Service:
    return make_service(shared_root, log_stream, classifier=loaded)


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def http_event(method: str, path: str, body: bytes | None = None, content_type: str | None = None,
               query: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"version": "2.0", "rawPath": path, "headers": {},
                           "requestContext": {"http": {"method": method, "path": path}, "requestId": "url-id"},
                           "isBase64Encoded": body is not None}
    if content_type:
        out["headers"]["content-type"] = content_type
    if query:
        out["queryStringParameters"] = query
    if body is not None:
        out["body"] = base64.b64encode(body).decode()
    return out


def jpeg(colour: tuple[int, int, int] = (120, 80, 40), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def body_of(response: dict[str, Any]) -> Any:
    return json.loads(response["body"])


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def request_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in log_lines(stream) if line["message"] == "request"]


# --- the HTTP API ---------------------------------------------------------------------------------

def test_predict_recorded_jpeg_event(service: Service) -> None:
    # GIVEN the recorded POST /predict?top_k=3 event with a base64 JPEG
    # WHEN handled
    response = service.handle(event("function_url_predict_jpeg.json"), Context())
    # THEN 200 with exactly the documented body
    assert response["statusCode"] == 200 and response["headers"]["content-type"] == "application/json"
    body = body_of(response)
    assert set(body) == {"predictions", "model", "timing_ms", "warning"}
    assert body["warning"] == UNTRAINED_WARNING
    assert body["model"] == {"name": NAME, "version": "v1", "variant": "fp32"}
    assert set(body["timing_ms"]) == {"decode", "preprocess", "inference", "total", "variant"}
    predictions = body["predictions"]
    assert [set(p) for p in predictions] == [{"index", "label", "probability"}] * 3
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-9
    assert {p["label"] for p in predictions} == LABELS
    assert {p["index"] for p in predictions} == {0, 1, 2}


def test_predict_with_logits_matches_a_plain_forward_pass(service: Service) -> None:
    # GIVEN the recorded IAM event asking for logits
    recorded = event("function_url_predict_jpeg_iam.json")
    # WHEN handled
    body = body_of(service.handle(recorded, Context()))
    # THEN the logits are the model's output for that image, top-5 capped at 3 classes
    classifier = service.holder.get()
    photo = classifier.decode(base64.b64decode(recorded["body"]))
    predictor = classifier.predictor
    assert isinstance(predictor, TorchPredictor)  # v1 has only fp32: the eager network, run directly here
    with torch.inference_mode():
        expected = predictor.module(torch.from_numpy(classifier.preprocess(photo)))[0].tolist()
    assert body["logits"] == pytest.approx(expected, abs=1e-5)
    assert len(body["predictions"]) == 3


def test_predict_json_body(service: Service) -> None:
    response = service.handle(event("function_url_predict_json.json"), Context())
    assert response["statusCode"] == 200 and len(body_of(response)["predictions"]) == 3


def test_predict_text_body_is_415(service: Service) -> None:
    response = service.handle(event("function_url_predict_text.json"), Context())
    assert response["statusCode"] == 415
    assert body_of(response)["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize("top_k, status, code", [("1", 200, None), ("3", 200, None), ("0", 400, "bad_top_k"),
                                                 ("4", 400, "bad_top_k"), ("abc", 400, "bad_top_k"),
                                                 ("-1", 400, "bad_top_k")])
def test_top_k_range_is_one_to_num_classes(service: Service, top_k: str, status: int, code: str | None) -> None:
    # GIVEN ?top_k=<value> on a 3-class model  WHEN predicting  THEN 200 with that many, or bad_top_k
    response = service.handle(http_event("POST", "/predict", jpeg(), "image/jpeg", {"top_k": top_k}), Context())
    assert response["statusCode"] == status
    body = body_of(response)
    if code is None:
        assert len(body["predictions"]) == int(top_k)
    else:
        assert body["error"]["code"] == code


def test_health_and_model(service: Service) -> None:
    # WHEN /health and /model are asked
    health = service.handle(event("function_url_health.json"), Context())
    model = service.handle(event("function_url_model.json"), Context())
    # THEN the model is named, with what a client needs to know about it
    assert health["statusCode"] == 200
    assert body_of(health) == {"status": "ok", "model": {"name": NAME, "version": "v1", "variant": "fp32"}}
    info = body_of(model)
    assert model["statusCode"] == 200
    assert {"name", "version", "arch", "num_classes", "preprocess", "trained", "variant"} <= set(info)
    assert (info["arch"], info["num_classes"], info["trained"]) == ("resnet18", 3, False)
    assert (info["variant"], info["engine"]) == ("fp32", "torch")
    assert info["preprocess"]["size"] == [64, 64]


def test_head_is_get_without_body(service: Service) -> None:
    response = service.handle(http_event("HEAD", "/health"), Context())
    assert response["statusCode"] == 200 and response["body"] == ""


@pytest.mark.parametrize("method, path, allow", [("GET", "/predict", "POST, OPTIONS"),
                                                 ("HEAD", "/predict", "POST, OPTIONS"),
                                                 ("POST", "/health", "GET, HEAD, OPTIONS"),
                                                 ("DELETE", "/model", "GET, HEAD, OPTIONS")])
def test_wrong_method_is_405_with_allow(service: Service, method: str, path: str, allow: str) -> None:
    response = service.handle(http_event(method, path), Context())
    assert response["statusCode"] == 405 and response["headers"]["allow"] == allow
    assert response["body"] == "" if method == "HEAD" else body_of(response)["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/", "/predictions", "/admin", "/../etc/passwd"])
def test_unknown_path_is_404(service: Service, path: str) -> None:
    response = service.handle(http_event("GET", path), Context())
    assert response["statusCode"] == 404 and body_of(response)["error"]["code"] == "not_found"


def test_options_preflight(service: Service) -> None:
    response = service.handle(event("function_url_options_predict.json"), Context())
    assert response["statusCode"] == 204 and response["headers"]["allow"] == "POST, OPTIONS"
    assert "access-control-allow-origin" not in response["headers"]  # no origin configured: the URL's CORS decides


def test_cors_origin_when_configured(shared_root: Path, loaded: Classifier, log_stream: io.StringIO) -> None:
    service = make_service(shared_root, log_stream, classifier=loaded, CORS_ALLOW_ORIGIN="https://app.example.com")
    for response in (service.handle(http_event("OPTIONS", "/predict"), Context()),
                     service.handle(http_event("GET", "/health"), Context())):
        assert response["headers"]["access-control-allow-origin"] == "https://app.example.com"


def test_body_over_the_limit_is_413(shared_root: Path, loaded: Classifier, log_stream: io.StringIO) -> None:
    service = make_service(shared_root, log_stream, classifier=loaded, MAX_BODY_BYTES="1000")
    response = service.handle(http_event("POST", "/predict", b"\xff\xd8\xff" + b"0" * 2000, "image/jpeg"), Context())
    assert response["statusCode"] == 413 and body_of(response)["error"]["code"] == "payload_too_large"


def test_image_over_the_pixel_limit_is_413(store: str, root: Path, log_stream: io.StringIO) -> None:
    # GIVEN MAX_IMAGE_PIXELS=1000 (the loaded classifier takes its limit from the settings)
    sync(store, NAME, root, version="v1", progress=False)
    service = make_service(root, log_stream, MAX_IMAGE_PIXELS="1000")
    response = service.handle(http_event("POST", "/predict", jpeg(size=(64, 48)), "image/jpeg"), Context())
    assert response["statusCode"] == 413 and body_of(response)["error"]["code"] == "image_too_large"


# --- direct invocation ----------------------------------------------------------------------------

def test_direct_invocation_gets_the_same_body_without_envelope(service: Service) -> None:
    # GIVEN the recorded direct payload {"image": ..., "top_k": 3}
    # WHEN invoked directly
    body = service.handle(event("direct_predict.json"), Context())
    # THEN the same JSON as /predict, not wrapped in statusCode/body
    assert set(body) == {"predictions", "model", "timing_ms", "warning"} and len(body["predictions"]) == 3


def test_direct_batch_runs_one_pass_and_keeps_order(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the recorded {"images": [jpeg, png]} payload plus a bad image, and a counter on predict
    payload = event("direct_batch.json")
    payload["images"].insert(1, base64.b64encode(b"not an image").decode())
    classifier = service.holder.get()
    batches: list[int] = []
    original = classifier.predict

    def counting(batch: np.ndarray) -> np.ndarray:
        batches.append(batch.shape[0])
        return original(batch)

    monkeypatch.setattr(classifier, "predict", counting)
    # WHEN invoked
    body = service.handle(payload, Context())
    # THEN one forward pass of the two images; results in order with the bad one's error in place
    assert batches == [2]
    results = body["results"]
    assert len(results) == 3 and len(results[0]["predictions"]) == 2 and len(results[2]["predictions"]) == 2
    assert results[1] == {"error": {"code": "not_an_image", "message": results[1]["error"]["message"]},
                          "status": 400}
    assert body["model"]["version"] == "v1" and body["timing_ms"]["inference"] > 0


def test_direct_batch_inference_time_counts_every_chunk(service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN six images, so the classifier runs a chunk of four and a chunk of two, each taking a known time
    payload = event("direct_batch.json")
    payload["images"] = (payload["images"] * 3)[:6]
    classifier = service.holder.get()
    original = classifier.predict

    def slow(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.02 * batch.shape[0])
        return original(batch)

    monkeypatch.setattr(classifier, "predict", slow)
    # WHEN invoked
    body = service.handle(payload, Context())
    # THEN each answer names its chunk, and the batch's inference time is both chunks', counted once each
    sizes = [r["timing_ms"]["chunk_size"] for r in body["results"]]
    assert sizes == [4, 4, 4, 4, 2, 2]
    chunk_ms = {r["timing_ms"]["chunk_size"]: r["timing_ms"]["inference"] for r in body["results"]}
    assert body["timing_ms"]["inference"] == pytest.approx(chunk_ms[4] + chunk_ms[2], abs=0.01)
    assert body["timing_ms"]["inference"] >= 120.0


@pytest.mark.parametrize("payload, status, code", [
    ({"image": "%%%"}, 400, "bad_base64"),
    ({"image": base64.b64encode(b"text").decode()}, 400, "not_an_image"),
    ({"image": "aGk=", "top_k": 99}, 400, "bad_top_k"),
    ({"nothing": True}, 400, "bad_request"),
    ("just a string", 400, "bad_request"),
    ({"s3_uri": "s3://bucket/dog.jpg"}, 403, "s3_not_allowed"),
])
def test_direct_errors_carry_status(service: Service, payload: Any, status: int, code: str) -> None:
    body = service.handle(payload, Context())
    assert body["status"] == status and body["error"]["code"] == code


def test_direct_s3_uri_under_an_allowed_prefix(shared_root: Path, loaded: Classifier, log_stream: io.StringIO) -> None:
    # GIVEN ALLOWED_S3_PREFIXES=s3://photos/incoming and an S3 client stubbed to return a JPEG
    service = make_service(shared_root, log_stream, classifier=loaded, ALLOWED_S3_PREFIXES="s3://photos/incoming")
    import boto3

    client = boto3.client("s3", region_name="us-east-1")
    data = jpeg()
    with Stubber(client) as stub:
        stub.add_response("get_object", {"Body": _streaming(data), "ContentLength": len(data)},
                          {"Bucket": "photos", "Key": "incoming/dog.jpg"})
        service.fetcher = S3ImageFetcher(service.settings.allowed_s3_prefixes, 10**6, lambda: client)
        # WHEN a direct invocation names an object under the prefix, and others that are not
        ok = service.handle({"s3_uri": "s3://photos/incoming/dog.jpg", "top_k": 1}, Context())
        sibling = service.handle({"s3_uri": "s3://photos/incoming-private/x.jpg"}, Context())
        dotted = service.handle({"s3_uri": "s3://photos/incoming/../secret.jpg"}, Context())
        other = service.handle({"s3_uri": "s3://elsewhere/incoming/dog.jpg"}, Context())
        url = service.handle({"s3_uri": "https://example.com/dog.jpg"}, Context())
        stub.assert_no_pending_responses()
    # THEN only the allowed object was fetched and classified; the rest never reached S3
    assert len(ok["predictions"]) == 1
    assert [r["error"]["code"] for r in (sibling, dotted, other)] == ["s3_not_allowed"] * 3
    assert (url["status"], url["error"]["code"]) == (400, "bad_request")


def test_direct_s3_missing_object_is_404(shared_root: Path, loaded: Classifier, log_stream: io.StringIO) -> None:
    service = make_service(shared_root, log_stream, classifier=loaded, ALLOWED_S3_PREFIXES="s3://photos/")
    import boto3

    client = boto3.client("s3", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        service.fetcher = S3ImageFetcher(service.settings.allowed_s3_prefixes, 10**6, lambda: client)
        body = service.handle({"s3_uri": "s3://photos/gone.jpg"}, Context())
    assert (body["status"], body["error"]["code"]) == (404, "not_found")


# --- faults: missing model, bad versions, deadlines, bugs, garbage --------------------------------

def test_missing_model_is_503_then_recovers_with_backoff(store: str, root: Path, log_stream: io.StringIO) -> None:
    # GIVEN a function started before its model version reached the model root
    clock = FakeClock()
    service = make_service(root, log_stream, clock)
    # WHEN asked right away
    first = service.handle(http_event("GET", "/health"), Context())
    # THEN 503 with the reason
    assert first["statusCode"] == 503
    assert body_of(first)["status"] == "unavailable"
    assert body_of(first)["error"]["code"] == "model_unavailable" and "v1" in body_of(first)["error"]["message"]
    # WHEN a predict comes 1 s later (the first retry is due) and still finds nothing
    clock.now += 1.0
    second = service.handle(http_event("POST", "/predict", jpeg(), "image/jpeg"), Context())
    assert second["statusCode"] == 503 and "next load attempt in 2 s" in body_of(second)["error"]["message"]
    # AND the version appears, but the backoff (now 2 s) has not elapsed
    sync(store, NAME, root, version="v1", progress=False)
    clock.now += 1.0
    assert service.handle(http_event("GET", "/health"), Context())["statusCode"] == 503
    # THEN once it has, the function serves by itself, with no restart
    clock.now += 1.0
    recovered = service.handle(http_event("POST", "/predict", jpeg(), "image/jpeg"), Context())
    assert recovered["statusCode"] == 200 and body_of(recovered)["model"]["version"] == "v1"
    failures = [line for line in log_lines(log_stream) if line["message"] == "model load failed"]
    assert [line["retry_in_s"] for line in failures] == [1.0, 2.0]


def test_checksum_mismatch_at_cold_start_is_503(store: str, root: Path, log_stream: io.StringIO) -> None:
    # GIVEN a synced version whose weights were altered on disk (same size, different bytes)
    directory = sync(store, NAME, root, version="v1", progress=False)
    _corrupt(directory / "model.safetensors")
    # WHEN the function starts and is asked to predict
    service = make_service(root, log_stream)
    response = service.handle(http_event("POST", "/predict", jpeg(), "image/jpeg"), Context())
    # THEN 503 naming the checksum problem
    assert response["statusCode"] == 503 and "sha256" in body_of(response)["error"]["message"]


def test_alias_follows_good_versions_and_refuses_bad_ones(store: str, root: Path, log_stream: io.StringIO) -> None:
    # GIVEN a function serving alias "live" -> v1, refreshed every 60 s
    writable = open_store(store)
    write_alias(writable, NAME, "live", "v1")
    sync(store, NAME, root, alias="live", progress=False)
    clock = FakeClock()
    service = make_service(root, log_stream, clock, MODEL_ALIAS="live")
    assert _version(service) == "v1"
    # WHEN the alias moves to v3, whose weights on disk are corrupt
    write_alias(writable, NAME, "live", "v3")
    _corrupt(sync(store, NAME, root, alias="live", progress=False) / "model.safetensors")
    clock.now += 61
    # THEN v3 is refused and v1 keeps serving
    assert _version(service) == "v1"
    refused = [line for line in log_lines(log_stream) if line["message"].startswith("new version refused")]
    assert refused and refused[0]["refused_version"] == "v3" and "sha256" in refused[0]["reason"]
    # WHEN the alias moves to a good v2
    write_alias(writable, NAME, "live", "v2")
    sync(store, NAME, root, alias="live", progress=False)
    clock.now += 30
    assert _version(service) == "v1"  # not before the refresh interval
    clock.now += 31
    # THEN the function switches to it by itself
    assert _version(service) == "v2"


def test_deadline_close_to_expiry_is_504_and_the_next_request_is_fine(service: Service) -> None:
    # GIVEN an invocation with 50 ms left (the margin is 250 ms)
    # WHEN predicting
    late = service.handle(http_event("POST", "/predict", jpeg(), "image/jpeg"), Context(remaining_ms=50))
    direct = service.handle({"image": base64.b64encode(jpeg()).decode()}, Context(remaining_ms=50))
    # THEN a clean 504 timeout, before inference
    assert late["statusCode"] == 504 and body_of(late)["error"]["code"] == "timeout"
    assert (direct["status"], direct["error"]["code"]) == (504, "timeout")
    # AND the next request with time left is answered
    assert service.handle(http_event("POST", "/predict", jpeg(), "image/jpeg"), Context())["statusCode"] == 200


def test_a_bug_is_500_without_internals_and_does_not_spoil_the_next_request(
        service: Service, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a bug in postprocessing
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("internal detail 1234")

    classifier = service.holder.get()
    monkeypatch.setattr(classifier, "postprocess", broken)
    # WHEN a request hits it
    response = service.handle(http_event("POST", "/predict", jpeg(), "image/jpeg"), Context(request_id="req-bug"))
    # THEN 500 internal_error with the request id only; the traceback is in the log line
    assert response["statusCode"] == 500
    error = body_of(response)["error"]
    assert error["code"] == "internal_error" and "req-bug" in error["message"] and "1234" not in error["message"]
    line = request_lines(log_stream)[-1]
    assert line["status"] == 500 and "internal detail 1234" in line["exception"]
    # AND once fixed, the next request is fine
    monkeypatch.undo()
    assert service.handle(http_event("POST", "/predict", jpeg(), "image/jpeg"), Context())["statusCode"] == 200


GARBAGE_EVENTS: list[Any] = [
    None, 0, 1.5, "event", [], [1, 2], {}, {"requestContext": None}, {"requestContext": {"http": None}},
    {"requestContext": {"http": {}}}, {"requestContext": {"http": {"method": None, "path": 3}}},
    {"requestContext": {"http": {"method": "POST", "path": "/predict"}}, "headers": [1], "body": 5},
    {"requestContext": {"http": {"method": "POST", "path": "/predict"}}, "headers": {"content-type": 7},
     "body": "\udcff\x00", "isBase64Encoded": False},
    {"requestContext": {"http": {"method": "POST", "path": "/predict"}}, "queryStringParameters": {"top_k": None},
     "body": "////", "isBase64Encoded": True},
    {"requestContext": {"http": {"method": "POST", "path": "/predict"}}, "headers": {"content-type": "application/json"},
     "body": '{"image": {"nested": ["x"]}}'},
    {"image": ""}, {"images": [None, 3]}, {"image": "aGk=", "top_k": float("inf")}, {"top_k": 3},
]


@pytest.mark.parametrize("garbage", GARBAGE_EVENTS)
def test_garbage_never_raises_and_is_never_5xx(service: Service, garbage: Any) -> None:
    # GIVEN a malformed event  WHEN handled  THEN an answer (4xx), never an exception or a 5xx
    response = service.handle(garbage, Context())
    status = response.get("statusCode", response.get("status"))
    assert isinstance(status, int) and 400 <= status < 500


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "get", "PATCH"]),
       path=st.sampled_from(["/predict", "/health", "/model", "/", "/x"]) | st.text(max_size=20),
       content_type=st.none() | st.sampled_from(["image/jpeg", "application/json", "text/plain", ""]) | st.text(max_size=20),
       body=st.none() | st.binary(max_size=300) | st.builds(lambda: jpeg()),
       query=st.dictionaries(st.sampled_from(["top_k", "logits", "x"]), st.text(max_size=6), max_size=3))
def test_arbitrary_function_url_events_never_5xx(service: Service, method: str, path: str, content_type: str | None,
                                                 body: bytes | None, query: dict[str, str]) -> None:
    # GIVEN any Function URL event  WHEN handled  THEN a well-formed answer below 500
    response = service.handle(http_event(method, path, body, content_type, query), Context())
    assert response["statusCode"] < 500 and isinstance(response["body"], str)


# --- observability --------------------------------------------------------------------------------

def test_one_log_line_per_request_without_payloads_or_credentials(service: Service, log_stream: io.StringIO) -> None:
    # GIVEN a signed request carrying an image  WHEN handled twice
    recorded = event("function_url_predict_jpeg_iam.json")
    service.handle(recorded, Context(request_id="first"))
    service.handle(recorded, Context(request_id="second"))
    # THEN two request lines with the request metadata...
    lines = request_lines(log_stream)
    assert [line["request_id"] for line in lines] == ["first", "second"]
    assert lines[0]["status"] == 200 and lines[0]["method"] == "POST" and lines[0]["path"] == "/predict"
    assert lines[0]["model_version"] == "v1" and set(lines[0]["timing_ms"]) == {"decode", "preprocess",
                                                                              "inference", "total", "variant"}
    assert lines[0]["cold_start"] is True and lines[1]["cold_start"] is False
    # ...and nothing of the body, the signature or the caller's identity anywhere in the log
    text = log_stream.getvalue()
    for secret in (recorded["body"][:40], "AWS4-HMAC-SHA256", "AKIAEXAMPLEKEY000000", "Signature=", "x-amz-date"):
        assert secret not in text


def test_emf_metrics_on_stdout(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a good request and a 415
    capsys.readouterr()
    service.handle(event("function_url_predict_jpeg.json"), Context())
    service.handle(event("function_url_predict_text.json"), Context())
    # WHEN stdout is read
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    # THEN EMF in the breedserve namespace: latency per request, errors by code
    directives = [blob["_aws"]["CloudWatchMetrics"][0] for blob in blobs]
    assert {d["Namespace"] for d in directives} == {"breedserve"}
    assert sum(1 for blob in blobs if "Latency" in blob) == 2
    errors = [blob for blob in blobs if "Errors" in blob]
    assert len(errors) == 1 and errors[0]["code"] == "unsupported_media_type"
    predicted = [blob["predicted_class"] for blob in blobs if "predicted_class" in blob]
    assert len(predicted) == 1 and predicted[0] in LABELS


# --- init ----------------------------------------------------------------------------------------

def test_bad_configuration_is_served_as_503_not_a_crash(log_stream: io.StringIO,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN invalid environment variables
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    telemetry = Telemetry(service=f"breedserve-test-{uuid.uuid4().hex[:8]}", stream=log_stream)
    service = Service.from_env({"MODEL_VERSION": "v1", "MODEL_ALIAS": "live", "MAX_BODY_BYTES": "lots",
                                "MODEL_NAME": "../etc"}, telemetry=telemetry)
    # WHEN asked anything  THEN 503 naming every problem
    message = body_of(service.handle(http_event("GET", "/health"), Context()))["error"]["message"]
    assert "MAX_BODY_BYTES" in message and "not both" in message and "invalid MODEL_NAME '../etc'" in message


@pytest.mark.parametrize("omp, expected", [("1", 1), ("", None)])
def test_the_thread_count_reaches_the_engine(store: str, root: Path, log_stream: io.StringIO,
                                            omp: str, expected: int | None) -> None:
    # GIVEN a model root with v1, and OMP_NUM_THREADS=1 or unset
    sync(store, NAME, root, version="v1", progress=False)
    telemetry = Telemetry(service=f"breedserve-test-{uuid.uuid4().hex[:8]}", stream=log_stream)
    pixels, threads = Image.MAX_IMAGE_PIXELS, torch.get_num_threads()
    try:
        # WHEN the service starts (as the Lambda init does)
        service = Service.from_env({"MODEL_ROOT": str(root), "MODEL_NAME": NAME, "MODEL_VERSION": "v1",
                                    "OMP_NUM_THREADS": omp}, telemetry=telemetry)
        classifier = service.holder.get()
        # THEN the engine runs with that many threads; unset, with every CPU this process may use
        assert classifier.predictor.threads == (expected or available_cpus())
    finally:
        Image.MAX_IMAGE_PIXELS = pixels
        torch.set_num_threads(threads)


def test_importing_the_entry_point_loads_the_model_without_torchvision(store: str, root: Path) -> None:
    # GIVEN a model root with v1
    sync(store, NAME, root, version="v1", progress=False)
    script = (
        "import sys, json, base64\n"
        "import handler.app as app\n"
        "assert app.SERVICE.holder.classifier is not None, app.SERVICE.holder.reason\n"
        f"payload = {{'image': base64.b64encode({jpeg()!r}).decode()}}\n"
        "body = app.lambda_handler(payload, None)\n"
        "print(json.dumps({'mods': sorted(m for m in ('torchvision', 'boto3') if m in sys.modules),"
        " 'top': body['predictions'][0]['label']}))\n"
    )
    env = {**os.environ, "MODEL_ROOT": str(root), "MODEL_NAME": NAME, "MODEL_VERSION": "v1",
           "POWERTOOLS_METRICS_DISABLED": "true", "LOG_LEVEL": "WARNING"}
    # WHEN a fresh interpreter imports handler.app (the Lambda init) and answers once
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    # THEN the model was loaded at import, and neither torchvision nor boto3 was imported
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["mods"] == [] and result["top"] in LABELS


def _version(service: Service) -> str:
    return body_of(service.handle(http_event("GET", "/health"), Context()))["model"]["version"]


def _corrupt(path: Path) -> None:
    """Flip bytes in the middle of a file, keeping its size (so only the checksum can tell)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def _streaming(data: bytes) -> Any:
    from botocore.response import StreamingBody

    return StreamingBody(io.BytesIO(data), len(data))
