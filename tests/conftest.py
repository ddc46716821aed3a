from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from tests.broker import kafka_broker


@pytest.fixture(scope="session")
def kafka_bootstrap():
    with kafka_broker() as (bootstrap, _kind):
        yield bootstrap


@pytest.fixture(params=["sqlite", "kafka"])
def log_kind(request) -> str:
    """Which event log a test runs on; tests taking it run on both."""
    return request.param


@pytest.fixture
def kafka(request, log_kind) -> str | None:
    """Bootstrap servers when the test runs on Kafka, else None (the embedded log)."""
    return request.getfixturevalue("kafka_bootstrap") if log_kind == "kafka" else None


@pytest.fixture
def admin():
    from tests.harness import Admin

    return Admin()


@pytest.fixture
def unique() -> str:
    """A suffix for topic and group names so tests sharing one broker never collide."""
    return uuid.uuid4().hex[:10]


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 20.0,
    interval: float = 0.02,
    what: str = "condition",
):
    """Wait on a condition with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def pytest_sessionfinish(session, exitstatus):
    # A skipped test is not coverage: the run fails when anything was skipped.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def pds():
    from tests.servers import FakePds

    server = FakePds().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def plc():
    from tests.servers import FakePlc

    server = FakePlc().start()
    yield server
    server.stop()


@pytest.fixture
def fresh_pds():
    """A PDS of the test's own, for tests that change its data or faults."""
    from tests.servers import FakePds

    server = FakePds().start()
    yield server
    server.stop()


def pytest_report_header(config):
    from tests.broker import broker_kind

    return f"Kafka tests run on: {broker_kind()}"


@pytest.fixture(scope="session")
def atproto(tmp_path_factory):
    """The reference PDS and PLC directory (npm), on loopback, for the whole session."""
    from tests.atproto_reference import reference_atproto

    with reference_atproto(tmp_path_factory.mktemp("atproto")) as servers:
        yield servers
