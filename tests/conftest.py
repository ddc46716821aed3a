from __future__ import annotations

import uuid

import pytest

from testkit.broker import kafka_broker


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
    from testkit.harness import Admin

    return Admin()


@pytest.fixture
def unique() -> str:
    """A suffix for topic and group names so tests sharing one broker never collide."""
    return uuid.uuid4().hex[:10]


def pytest_sessionfinish(session, exitstatus):
    # A skipped test is not coverage: the run fails when anything was skipped.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped") and exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def pds(plc):
    """The loopback PDS; repos added to it are registered in the loopback PLC directory."""
    from testkit.servers import FakePds

    server = FakePds(plc).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def plc():
    from testkit.servers import FakePlc

    server = FakePlc().start()
    yield server
    server.stop()


@pytest.fixture
def fresh_pds(plc):
    """A PDS of the test's own, for tests that change its data or faults."""
    from testkit.servers import FakePds

    server = FakePds(plc).start()
    yield server
    server.stop()


def pytest_report_header(config):
    from testkit.broker import broker_kind

    return f"Kafka tests run on: {broker_kind()}"


@pytest.fixture(scope="session")
def atproto(tmp_path_factory):
    """The reference PDS and PLC directory (npm), on loopback, for the whole session."""
    from testkit.atproto_reference import reference_atproto

    with reference_atproto(tmp_path_factory.mktemp("atproto")) as servers:
        yield servers


@pytest.fixture(autouse=True)
def no_sqlite_connection_outlives_its_test(monkeypatch):
    """An aiosqlite connection left open keeps a non-daemon thread alive, and the interpreter
    waits for it at exit: a run that passed then hangs. Every connection a test opens (through
    the service's code or its own) is closed by the test's end."""
    import aiosqlite.core

    opened: list = []
    connect = aiosqlite.core.Connection._connect

    async def tracked(self):
        opened.append(self)
        return await connect(self)

    monkeypatch.setattr(aiosqlite.core.Connection, "_connect", tracked)
    yield
    left = [c for c in opened if c._connection is not None]
    assert not left, f"{len(left)} aiosqlite connection(s) still open after the test"
