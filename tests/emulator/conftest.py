"""Fixtures for the emulator tests (helpers are in support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator import Emulator
from tests.emulator.support import ListLog, Running, fake_aws_environment, toy_config


@pytest.fixture(scope="module")
def toy() -> Iterator[Running]:
    """Two warm runtimes of the toy handler, shared by the tests of one module."""
    log = ListLog()
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake_aws_environment(monkeypatch)
        emulator = Emulator(toy_config(concurrency=2), log=log).start()
    with emulator:
        emulator.wait_ready(timeout=60)
        yield Running(emulator, log)
