"""Hypothesis drives arbitrary events and bodies through `handler.app.lambda_handler`.

Whatever arrives (a well-formed Function URL event with a hostile body, a half-formed one, a
direct invocation of any JSON, a valid image with bytes flipped, cut or inserted), the entry point
must return an answer: never raise, never a 5xx, and always something a Function URL can serve
(the emulator's own response mapping is the judge) or a JSON-serialisable direct result.

The entry point is imported for real, with the environment Lambda would give it, so the module's
init (settings, Pillow's bomb guard, the model load) is the production one. Example counts are
bounded so the whole file runs in well under a minute on two shared cores.
"""

from __future__ import annotations

import base64
import importlib
import json
import math
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from emulator.events import function_url_response
from handler.events import PAYLOAD_KEYS, is_function_url_event
from model_store.manifest import Architecture, Preprocessing
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.sync import sync
from tests.hostile.corpus import animated_gif, encode, exif_rotated_jpeg, photo, sixteen_bit_rgb_png

NAME, VERSION = "fuzz", "v1"
CLASSES = ("001.Affenpinscher", "096.Labrador_retriever", "133.Yorkshire_terrier")
MAX_BODY_BYTES = 200_000
FUZZ = settings(deadline=None, derandomize=False, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

SEEDS: list[bytes] = [
    encode(photo((40, 30)), "JPEG"),
    encode(photo((40, 30), seed=1), "JPEG", progressive=True),
    encode(photo((40, 30), seed=2), "PNG"),
    encode(photo((40, 30), seed=3), "WEBP"),
    encode(photo((40, 30), seed=4), "BMP"),
    animated_gif(),
    exif_rotated_jpeg(),
    sixteen_bit_rgb_png(),
]


class Context:
    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """`handler.app`, imported fresh with a synced 3-class model (its init is Lambda's init)."""
    store = tmp_path_factory.mktemp("store").as_uri()
    root: Path = tmp_path_factory.mktemp("models")
    torch.manual_seed(3)
    arch = Architecture(depth=18)
    publish_state_dict(build_model(arch, len(CLASSES)).state_dict(), store, NAME, VERSION, arch=arch,
                       class_names=CLASSES, preprocess=Preprocessing(resize_mode="exact", size=(32, 32)),
                       trained=True, source="test", progress=False)
    sync(store, NAME, root, version=VERSION, progress=False)
    pixels, threads = Image.MAX_IMAGE_PIXELS, torch.get_num_threads()
    previous = sys.modules.pop("handler.app", None)
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"MODEL_ROOT": str(root), "MODEL_NAME": NAME, "MODEL_VERSION": VERSION,
                           "MAX_BODY_BYTES": str(MAX_BODY_BYTES), "OMP_NUM_THREADS": "1",
                           "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "CRITICAL"}.items():
            env.setenv(key, value)
        module = importlib.import_module("handler.app")
    try:
        assert module.SERVICE.holder.classifier is not None, module.SERVICE.holder.reason
        yield module
    finally:
        sys.modules.pop("handler.app", None)
        if previous is not None:
            sys.modules["handler.app"] = previous
        Image.MAX_IMAGE_PIXELS = pixels
        torch.set_num_threads(threads)


def answer(app: ModuleType, event: Any) -> Any:
    """Call the entry point; it must return, whatever the event."""
    return app.lambda_handler(event, Context())


def assert_servable(event: Any, result: Any) -> None:
    """Below 500, and something Lambda can serialise and a Function URL can turn into HTTP."""
    text = json.dumps(result, allow_nan=False)  # what awslambdaric sends back must be plain JSON
    if is_function_url_event(event):
        response = function_url_response(text.encode())
        assert 200 <= response.status < 500, (response.status, response.body[:300])
        assert result["isBase64Encoded"] is False and isinstance(result["body"], str)
        if response.body:
            body = json.loads(response.body)
            assert response.status < 300 or body["error"]["code"], body
        return
    assert isinstance(result, dict), result
    if "error" in result:
        assert 400 <= result["status"] < 500 and result["error"]["code"], result
    else:
        assert "predictions" in result or "results" in result, result


# --- strategies ----------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
any_values = json_values | st.floats() | st.binary(max_size=20)  # what a Python caller could pass


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with some bytes flipped, cut, duplicated or inserted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "duplicate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at:at + draw(st.integers(1, 512))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 256))]
    return bytes(data)


bodies = (st.binary(max_size=512) | mutated_images() | st.sampled_from(SEEDS)
          | json_values.map(lambda v: json.dumps(v).encode()))
content_types = st.none() | st.sampled_from(
    ["image/jpeg", "image/png", "application/json", "application/octet-stream", "text/plain", "image/tiff",
     "multipart/form-data; boundary=x", "application/vnd.api+json", "IMAGE/JPEG", ""]) | st.text(max_size=30)


@st.composite
def function_url_events(draw: st.DrawFn) -> dict[str, Any]:
    """A payload-2.0 event, mostly well formed, with hostile parts anywhere."""
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "post"]) | st.text(max_size=8))
    path = draw(st.sampled_from(["/predict", "/health", "/model", "/", "/predict/", "//predict"])
                | st.text(max_size=40))
    headers: dict[str, Any] = draw(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4))
    content_type = draw(content_types)
    if content_type is not None:
        headers["content-type"] = content_type
    event: dict[str, Any] = {
        "version": "2.0", "rawPath": path, "headers": headers,
        "requestContext": {"http": {"method": method, "path": path, "sourceIp": "203.0.113.7"},
                           "requestId": draw(st.text(max_size=12))},
    }
    query = draw(st.dictionaries(st.sampled_from(["top_k", "logits", "x"]) | st.text(max_size=6),
                                 st.text(max_size=12) | st.integers().map(str), max_size=3))
    if query:
        event["queryStringParameters"] = query
    body = draw(st.none() | bodies)
    if body is not None:
        if draw(st.booleans()):
            event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
        else:
            event["body"], event["isBase64Encoded"] = body.decode("latin-1"), False
    for key in draw(st.lists(st.sampled_from(["headers", "body", "isBase64Encoded", "queryStringParameters",
                                              "requestContext.http.path", "requestContext.requestId"]),
                             max_size=2)):
        value = draw(any_values)
        if key.startswith("requestContext."):
            target = event["requestContext"]["http"] if key.endswith("path") else event["requestContext"]
            target[key.rsplit(".", 1)[1]] = value
        else:
            event[key] = value
    return event


@st.composite
def direct_payloads(draw: st.DrawFn) -> Any:
    """Arbitrary JSON, or an object with our payload keys holding anything (good images included)."""
    image_text = st.sampled_from(SEEDS).map(lambda b: base64.b64encode(b).decode()) | \
        mutated_images().map(lambda b: base64.b64encode(b).decode())
    field_values = {
        "image": image_text | any_values,
        "images": st.lists(image_text | any_values, max_size=4) | any_values,
        "s3_uri": st.sampled_from(["s3://b/k.jpg", "https://example.com/x.jpg", "file:///etc/passwd"]) | any_values,
        "top_k": st.integers(-5, 10) | any_values,
        "logits": st.booleans() | any_values,
    }
    keys = draw(st.lists(st.sampled_from(PAYLOAD_KEYS), max_size=3, unique=True))
    shaped = {key: draw(field_values[key]) for key in keys}
    return draw(st.just(shaped) | json_values | any_values)


# --- the properties ------------------------------------------------------------------------------

@settings(FUZZ, max_examples=150)
@given(event=function_url_events())
def test_any_function_url_event_gets_a_servable_answer_below_500(app: ModuleType, event: dict[str, Any]) -> None:
    # GIVEN any Function URL event  WHEN the entry point handles it  THEN a servable answer below 500
    assert_servable(event, answer(app, event))


@settings(FUZZ, max_examples=120)
@given(payload=direct_payloads())
def test_any_direct_payload_gets_a_json_answer_below_500(app: ModuleType, payload: Any) -> None:
    # GIVEN any direct-invocation payload  WHEN handled  THEN a JSON answer, errors below 500
    assert_servable(payload, answer(app, payload))


@settings(FUZZ, max_examples=120)
@given(data=mutated_images(), content_type=st.sampled_from(["image/jpeg", "image/png", "application/octet-stream"]),
       top_k=st.none() | st.integers(-2, 5).map(str))
def test_damaged_images_are_answered_200_or_a_clean_4xx(app: ModuleType, data: bytes, content_type: str,
                                                        top_k: str | None) -> None:
    # GIVEN a real image with damage anywhere
    event: dict[str, Any] = {
        "version": "2.0", "rawPath": "/predict", "headers": {"content-type": content_type},
        "requestContext": {"http": {"method": "POST", "path": "/predict"}, "requestId": "fuzz"},
        "body": base64.b64encode(data).decode(), "isBase64Encoded": True}
    if top_k is not None:
        event["queryStringParameters"] = {"top_k": top_k}
    # WHEN it is posted to /predict
    result = answer(app, event)
    # THEN predictions or a precise 4xx; never a half-decoded answer or a 5xx
    assert_servable(event, result)
    body = json.loads(result["body"])
    if result["statusCode"] == 200:
        probabilities = [p["probability"] for p in body["predictions"]]
        assert all(math.isfinite(p) and 0 <= p <= 1 for p in probabilities)
    else:
        assert body["error"]["code"] in {"not_an_image", "bad_top_k", "image_too_large", "unsupported_media_type"}


@settings(FUZZ, max_examples=60)
@given(value=json_values, as_image=st.booleans())
def test_any_json_body_is_answered_below_500(app: ModuleType, value: Any, as_image: bool) -> None:
    # GIVEN any JSON value as the body of POST /predict (sometimes wrapped as {"image": ...})
    payload = {"image": value} if as_image else value
    event = {"version": "2.0", "rawPath": "/predict", "headers": {"content-type": "application/json"},
             "requestContext": {"http": {"method": "POST", "path": "/predict"}, "requestId": "fuzz"},
             "body": json.dumps(payload), "isBase64Encoded": False}
    # WHEN handled  THEN a 4xx with a code (no JSON value here is a servable image)
    result = answer(app, event)
    assert_servable(event, result)
    assert 400 <= result["statusCode"] < 500


def test_the_entry_point_was_initialised_like_lambda(app: ModuleType) -> None:
    # GIVEN the imported entry point  THEN its init loaded the model and applied the environment's limits
    service = app.SERVICE
    assert service.settings.max_body_bytes == MAX_BODY_BYTES
    assert service.holder.get().manifest.version == VERSION
    assert Image.MAX_IMAGE_PIXELS == service.settings.max_image_pixels
