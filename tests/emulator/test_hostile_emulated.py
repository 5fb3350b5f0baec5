"""The whole hostile corpus through the emulator: real HTTP, real awslambdaric, the real handler.

Two runtimes serve a ResNet-18 (133 classes, `resize224`, untrained) published and synced the way
production does it. Every case of tests/hostile/corpus.py is sent over HTTP to the emulated
Function URL (direct-invocation cases through the Invoke API), two at a time, and each answer
must be exactly the expected one. Nothing may reach the platform: no function error, no timeout,
and no runtime restart, since a restart on Lambda is a cold start paid by the next user.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from emulator import Emulator, EmulatorConfig
from model_store.manifest import Architecture, dog_breed_classes
from model_store.publish import publish_state_dict
from model_store.resnet import build_model
from model_store.sync import sync
from tests.emulator.support import ListLog, Running, fake_aws_environment, http_request
from tests.hostile.corpus import (
    CORPUS_MAX_BODY_BYTES,
    HostileCase,
    cached_corpus,
    check_direct_answer,
    check_http_answer,
)

NAME, VERSION = "dogs", "hostile-r18"
CORPUS = cached_corpus(len(dog_breed_classes()))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Two warm runtimes of handler.app.lambda_handler with the corpus's body limit."""
    torch.manual_seed(99)
    arch = Architecture(depth=18)
    store = tmp_path_factory.mktemp("store").as_uri()
    root: Path = tmp_path_factory.mktemp("models")
    publish_state_dict(build_model(arch, len(dog_breed_classes())).state_dict(), store, NAME, VERSION, arch=arch,
                       class_names=dog_breed_classes(), preprocess="resize224", trained=False, source="tests",
                       progress=False)
    sync(store, NAME, root, version=VERSION, progress=False)
    config = EmulatorConfig(port=0, model_root=root, model_name=NAME, model_version=VERSION, concurrency=2,
                            timeout_s=120.0, environment={"MAX_BODY_BYTES": str(CORPUS_MAX_BODY_BYTES),
                                                          "OMP_NUM_THREADS": "1",
                                                          "POWERTOOLS_METRICS_DISABLED": "true"})
    log = ListLog()
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake_aws_environment(monkeypatch)
        emulator = Emulator(config, log=log).start()
    with emulator:
        emulator.wait_ready(timeout=300)
        yield Running(emulator, log)


def send(running: Running, case: HostileCase) -> Any:
    """One case over the wire: an HTTP reply (status, lower-cased headers, body) or a direct result."""
    emulator = running.emulator
    if case.direct:
        result = emulator.invoke(case.payload)
        assert result.ok, f"{case.name}: the function failed: {result.error_type} {result.payload[:300]!r}"
        return result.json()
    reply = http_request(emulator.url, case.method, case.target, case.body, case.headers, timeout=120.0)
    return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.body


@pytest.fixture(scope="module")
def answers(served: Running) -> dict[str, Any]:
    """Every case sent once, two at a time (one per runtime), with the pids before and after."""
    before = served.emulator.stats()
    with ThreadPoolExecutor(max_workers=2) as pool:
        replies = dict(zip((case.name for case in CORPUS), pool.map(lambda c: send(served, c), CORPUS)))
    replies["_stats_before"] = before
    return replies


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_each_case_gets_its_exact_answer_through_the_emulator(answers: dict[str, Any], case: HostileCase) -> None:
    # GIVEN one hostile request sent to the emulated Function URL (or Invoke API)
    answer = answers[case.name]
    # THEN the client got exactly the expected status and error code
    if case.direct:
        check_direct_answer(case, answer)
    else:
        check_http_answer(case, *answer)


def test_the_runtimes_never_restarted_and_the_platform_saw_no_error(served: Running,
                                                                    answers: dict[str, Any]) -> None:
    # GIVEN the whole corpus answered
    before = answers["_stats_before"]
    after = served.emulator.stats()
    # THEN every invocation was answered by the handler itself: no restart, no function error, no timeout
    assert after.invocations - before.invocations >= len(CORPUS)
    assert after.restarts == 0 and after.errors == 0 and after.timeouts == 0 and after.init_errors == 0
    assert [r.pid for r in after.runtimes] == [r.pid for r in before.runtimes]
    assert all(r.invocations > 0 for r in after.runtimes)  # both runtimes took hostile traffic
    # AND the function still serves
    health = http_request(served.emulator.url, "GET", "/health")
    assert health.status == 200 and json.loads(health.body)["model"]["version"] == VERSION
