"""Runtime life cycle: timeouts, init errors, crashes, concurrency, and the counters."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from emulator import Emulator
from emulator.exceptions import RuntimeInitError
from tests.emulator.support import ListLog, Running, http_request, process_alive, toy_config

INVOKE = "/2015-03-31/functions/function/invocations"


def test_timeout_kills_the_runtime_restarts_it_and_the_next_request_works() -> None:
    # GIVEN one runtime with a 1 s timeout, and the pid that serves it
    log = ListLog()
    with Emulator(toy_config(timeout_s=1.0), log=log) as emulator:
        emulator.wait_ready(timeout=60)
        first_pid = emulator.invoke({"action": "echo"}).json()["pid"]

        # WHEN an invocation sleeps past the timeout, through each entry point
        timed_out = emulator.invoke({"action": "sleep", "seconds": 30})
        url_reply = http_request(emulator.url, "GET", "/sleep?seconds=30")
        after = emulator.invoke({"action": "echo"})
        stats = emulator.stats()

    # THEN the Invoke API gets Lambda's Sandbox.Timedout, the Function URL a 502
    assert timed_out.error_type == "Sandbox.Timedout"
    assert timed_out.json()["errorMessage"] == (
        f"RequestId: {timed_out.request_id} Error: Task timed out after 1.00 seconds")
    assert url_reply.status == 502 and url_reply.headers["X-Amzn-ErrorType"] == "Sandbox.Timedout"
    # ... the hung process was killed, a fresh one serves the next request, cold
    assert not process_alive(first_pid)
    assert after.ok and after.json()["pid"] != first_pid
    assert after.record.init_duration_ms is not None
    # ... the REPORT line says so and the counters agree
    assert "\tStatus: timeout" in log.report_for(timed_out.request_id)
    assert 1000 <= timed_out.record.duration_ms < 5000
    assert stats.timeouts == 2 and stats.restarts == 2 and stats.starts == 3


def test_init_error_is_reported_to_the_caller_and_init_is_retried_on_the_next_request() -> None:
    # GIVEN a handler module that raises at import
    log = ListLog()
    with Emulator(toy_config(handler="broken_import.lambda_handler"), log=log) as emulator:
        # WHEN the emulator waits for it, then two requests arrive
        with pytest.raises(RuntimeInitError) as failed:
            emulator.wait_ready(timeout=60)
        first = emulator.invoke({"action": "echo"})
        url_reply = http_request(emulator.url, "GET", "/echo")
        stats = emulator.stats()

    # THEN wait_ready names the error, the caller gets the init error object, the REPORT says so
    assert failed.value.error_type == "RuntimeError"
    assert "broken on purpose at import" in failed.value.error_message
    assert first.error_type == "RuntimeError"
    assert first.json()["errorMessage"] == "broken on purpose at import"
    assert first.record.status == "init_error" and first.record.init_duration_ms is not None
    report = log.report_for(first.request_id)
    assert "\tInit Duration: " in report and report.endswith("\tStatus: error\tError Type: RuntimeError")
    # ... and the next request started a new runtime (which failed again, answered as 502)
    assert url_reply.status == 502 and url_reply.headers["X-Amzn-ErrorType"] == "RuntimeError"
    assert stats.starts == 2 and stats.restarts == 1 and stats.init_errors == 2
    assert stats.runtimes[0].state == "init_failed"


def test_runtime_crash_is_a_runtime_exit_error_and_is_replaced(toy: Running) -> None:
    # GIVEN the warm toy runtimes
    starts_before = toy.emulator.stats().starts

    # WHEN the handler kills its own process mid-invocation
    crashed = toy.emulator.invoke({"action": "exit"})

    # THEN Lambda's Runtime.ExitError, and a replacement serves what follows
    assert crashed.error_type == "Runtime.ExitError"
    assert crashed.json()["errorMessage"].endswith("Runtime exited with error: exit status 3")
    assert all(toy.emulator.invoke({"action": "echo"}).ok for _ in range(3))
    assert toy.emulator.stats().starts == starts_before + 1


def test_concurrency_two_serves_two_slow_requests_in_parallel(toy: Running) -> None:
    # GIVEN two runtimes and two requests that each take a second
    results: list[dict[str, Any]] = []

    def call() -> None:
        reply = http_request(toy.emulator.url, "POST", INVOKE, b'{"action": "sleep", "seconds": 1.0}')
        results.append(json.loads(reply.body))

    # WHEN they are sent at the same time
    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # THEN two different processes ran them, and their run times overlap
    first, second = sorted(results, key=lambda r: r["start"])
    assert first["pid"] != second["pid"]
    assert second["start"] < first["end"], "the second request waited for the first one"


def test_concurrency_one_serves_requests_one_at_a_time() -> None:
    # GIVEN a single runtime and two overlapping requests
    results: list[dict[str, Any]] = []
    with Emulator(toy_config(), log=ListLog()) as emulator:
        emulator.wait_ready(timeout=60)
        threads = [threading.Thread(target=lambda: results.append(
            emulator.invoke({"action": "sleep", "seconds": 0.5}).json())) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    # THEN they ran one after the other in the same process
    first, second = sorted(results, key=lambda r: r["start"])
    assert first["pid"] == second["pid"]
    assert second["start"] >= first["end"]


def test_stats_endpoint_reports_the_same_counters(toy: Running) -> None:
    # GIVEN some traffic, one of it failing
    toy.emulator.invoke({"action": "echo"})
    toy.emulator.invoke({"action": "raise"})

    # WHEN the stats are read over HTTP and through the Python API
    reply = http_request(toy.emulator.url, "GET", "/_emulator/stats?records=2")
    over_http = json.loads(reply.body)
    in_process = toy.emulator.stats()

    # THEN both tell the same story
    assert reply.status == 200
    assert over_http["ready"] is True and over_http["concurrency"] == 2
    assert over_http["invocations"] == in_process.invocations >= 2
    assert over_http["errors"] == in_process.errors >= 1
    assert over_http["starts"] == in_process.starts
    assert len(over_http["init_durations_ms"]) >= 2 and all(d > 0 for d in over_http["init_durations_ms"])
    assert [r["status"] for r in over_http["records"]] == ["ok", "error"]
    assert [r["name"] for r in over_http["runtimes"]] == ["runtime-0", "runtime-1"]
    assert all(r["rss_mb"] > 5 for r in over_http["runtimes"])
