"""The real handler under the real awslambdaric, behind the emulated Function URL.

A tiny ResNet-18 (133 classes, seeded, untrained) is published to a file store and synced into a
model root, as the deployment does with S3 and EFS. Its answers are meaningless as breeds, so they
are checked against the same model run in this process: the emulated path (HTTP -> event ->
awslambdaric -> handler -> response) must not change a single prediction.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from emulator import Emulator, EmulatorConfig
from handler.classifier import Classifier
from model_store.manifest import Architecture, dog_breed_classes
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.sync import sync
from tests.emulator.support import ListLog, Reply, Running, fake_aws_environment, http_request

NAME, VERSION, ALIAS = "dogs", "r18-test", "live"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root holding a seeded ResNet-18, published and synced the way production does it."""
    torch.manual_seed(1234)
    arch = Architecture(depth=18)
    state_dict = build_model(arch, len(dog_breed_classes())).state_dict()
    store = tmp_path_factory.mktemp("store")
    root = tmp_path_factory.mktemp("models")
    publish_state_dict(state_dict, f"file://{store}", NAME, VERSION, arch=arch, class_names=dog_breed_classes(),
                       preprocess="resize224", trained=False, source="tests", alias=ALIAS, progress=False)
    sync(f"file://{store}", NAME, root, alias=ALIAS, progress=False)
    return root


@pytest.fixture(scope="module")
def reference(model_root: Path) -> Classifier:
    """The same model, loaded in this process without any Lambda machinery."""
    return Classifier.from_root(model_root, NAME, alias=ALIAS)


@pytest.fixture(scope="module")
def served(model_root: Path) -> Iterator[Running]:
    """The real handler (handler.app.lambda_handler) in one emulated runtime, warm."""
    log = ListLog()
    config = EmulatorConfig(port=0, model_root=model_root, model_name=NAME, model_alias=ALIAS, timeout_s=60.0,
                            memory_mb=2048)
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake_aws_environment(monkeypatch)
        emulator = Emulator(config, log=log).start()
    with emulator:
        emulator.wait_ready(timeout=180)
        yield Running(emulator, log)


def error_code(reply: Reply) -> str:
    return str(json.loads(reply.body)["error"]["code"])


def test_health_names_the_synced_version(served: Running) -> None:
    # GIVEN / WHEN GET /health
    reply = http_request(served.emulator.url, "GET", "/health")

    # THEN 200 with the version the alias pointed at
    assert reply.status == 200
    body = json.loads(reply.body)
    assert body["status"] == "ok"
    assert body["model"]["name"] == NAME and body["model"]["version"] == VERSION


def test_predictions_for_the_shared_photos_match_the_model_run_directly(
        served: Running, reference: Classifier, shared_images: list[Path]) -> None:
    for photo in shared_images:
        # GIVEN a real dog photo
        data = photo.read_bytes()

        # WHEN it is posted to the Function URL, as curl --data-binary would
        reply = http_request(served.emulator.url, "POST", "/predict?top_k=5", data,
                             [("Content-Type", "image/jpeg")])

        # THEN the top 5 are those of the model run in-process, with the same probabilities
        assert reply.status == 200, reply.body[:300]
        body = json.loads(reply.body)
        expected = reference.classify(data, top_k=5)["predictions"]
        got = body["predictions"]
        assert [p["index"] for p in got] == [p["index"] for p in expected], photo.name
        assert [p["label"] for p in got] == [p["label"] for p in expected]
        assert got[0]["probability"] == pytest.approx(expected[0]["probability"], abs=1e-5)
        assert body["model"]["version"] == VERSION and "warning" in body  # an untrained model says so
        assert body["timing_ms"]["total"] > 0


def test_direct_invocation_gives_the_same_answer(served: Running, reference: Classifier,
                                                 shared_images: list[Path]) -> None:
    # GIVEN a photo as base64, the way an SDK caller sends it
    data = shared_images[0].read_bytes()

    # WHEN the function is invoked directly with top_k 3
    result = served.emulator.invoke({"image": base64.b64encode(data).decode(), "top_k": 3})

    # THEN the same JSON body, no HTTP envelope
    assert result.ok
    body = result.json()
    assert "statusCode" not in body
    assert [p["index"] for p in body["predictions"]] == [
        p["index"] for p in reference.classify(data, top_k=3)["predictions"]]


@pytest.mark.parametrize("method, path, body, headers, status, code", [
    ("POST", "/predict", b"", [("Content-Type", "image/jpeg")], 400, None),
    ("POST", "/predict", b"\x00garbage\xff" * 50, [("Content-Type", "image/jpeg")], 400, None),
    ("POST", "/predict", b'{"image": "***not base64***"}', [("Content-Type", "application/json")], 400,
     "bad_base64"),
    ("POST", "/predict", b"{broken json", [("Content-Type", "application/json")], 400, "bad_json"),
    ("POST", "/predict?top_k=abc", b"\xff\xd8\xff", [("Content-Type", "image/jpeg")], 400, "bad_top_k"),
    ("GET", "/nowhere", None, [], 404, "not_found"),
    ("DELETE", "/predict", None, [], 405, "method_not_allowed"),
])
def test_bad_input_is_a_4xx_and_never_restarts_the_runtime(
        served: Running, method: str, path: str, body: bytes | None, headers: list[tuple[str, str]],
        status: int, code: str | None) -> None:
    # GIVEN the runtime serving now and how many times runtimes have started
    before = served.emulator.stats()

    # WHEN a bad request arrives
    reply = http_request(served.emulator.url, method, path, body, headers)

    # THEN a 4xx with the handler's error body, and the same runtime keeps serving
    assert reply.status == status, reply.body[:300]
    if code is not None:
        assert error_code(reply) == code
    after = served.emulator.stats()
    assert after.starts == before.starts and after.restarts == 0
    assert after.runtimes[0].pid == before.runtimes[0].pid
    assert http_request(served.emulator.url, "GET", "/health").status == 200


def test_no_invocation_was_a_function_error(served: Running) -> None:
    # GIVEN everything the tests above sent (this test runs last in the module)
    stats = served.emulator.stats()

    # THEN the handler answered every one itself: no Lambda-level error, no restart
    assert stats.invocations > 0
    assert stats.errors == 0 and stats.restarts == 0
