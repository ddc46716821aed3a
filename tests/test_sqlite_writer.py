"""The embedded log's writer: writes waiting together commit as one transaction, and a write
that fails takes only itself back."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from events.sqlite_writer import GroupWriter

pytestmark = pytest.mark.unit

SCHEMA = "CREATE TABLE IF NOT EXISTS rows (n INTEGER PRIMARY KEY);"


@pytest.fixture
async def writer(tmp_path):
    writer = GroupWriter(tmp_path / "w.db")
    await writer.open(SCHEMA)
    yield writer
    await writer.close()


def insert(n: int):
    def write(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO rows (n) VALUES (?)", (n,))
        return n

    return write


def rows(writer: GroupWriter) -> list[int]:
    with sqlite3.connect(writer.path) as conn:
        return [n for (n,) in conn.execute("SELECT n FROM rows ORDER BY n")]


async def test_writes_that_wait_together_commit_together(writer):
    results = await asyncio.gather(*(writer.write(insert(n)) for n in range(50)))
    assert results == list(range(50))
    assert rows(writer) == list(range(50))
    # 50 writes, a handful of fsyncs (here all came before the first commit began: one).
    assert 1 <= writer.transactions < 10
    before = writer.transactions
    for n in range(50, 53):  # one after another: a transaction each
        await writer.write(insert(n))
    assert writer.transactions == before + 3


async def test_a_failing_write_takes_back_only_itself(writer):
    def half_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO rows (n) VALUES (1000)")
        raise ValueError("this write fails halfway")

    outcomes = await asyncio.gather(
        writer.write(insert(1)),
        writer.write(half_then_fail),
        writer.write(insert(2)),
        return_exceptions=True,
    )
    assert outcomes[0] == 1 and outcomes[2] == 2
    assert isinstance(outcomes[1], ValueError)
    assert rows(writer) == [1, 2]  # 1000 went back with its write


async def test_a_commit_that_fails_fails_every_write_of_its_group(writer, tmp_path):
    # A second connection holds the write lock past the writer's patience.
    writer.busy_timeout_s = 0.05
    blocker = sqlite3.connect(writer.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        outcomes = await asyncio.gather(
            writer.write(insert(1)), writer.write(insert(2)), return_exceptions=True
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes), outcomes
    assert await writer.write(insert(3)) == 3  # the writer goes on once the lock is free
    assert rows(writer) == [3]


async def test_a_group_stops_growing_at_its_row_budget(writer):
    # Five writes of 400 rows at once: 400+400, 400+400, 400 (GROUP_ROWS is 1000), so no
    # transaction holds the file's write lock for more than about a thousand rows.
    before = writer.transactions
    await asyncio.gather(*(writer.write(insert(n), rows=400) for n in range(5)))
    assert writer.transactions - before == 3
    assert rows(writer) == list(range(5))


async def test_a_transaction_leaves_the_writes_it_has_no_time_for_to_the_next(writer, monkeypatch):
    # With no time to hold the lock at all, each transaction takes one write of the group and
    # puts the rest back, in order, at the head of the queue: every write still commits, in
    # the order it came, each answered with its own result.
    import events.sqlite_writer as sqlite_writer

    ran: list[int] = []

    def noted(n: int):
        def write(conn: sqlite3.Connection) -> int:
            ran.append(n)
            return insert(n)(conn)

        return write

    monkeypatch.setattr(sqlite_writer, "HOLD_S", 0.0)
    before = writer.transactions
    results = await asyncio.gather(*(writer.write(noted(n)) for n in range(6)))
    assert results == list(range(6)) and ran == list(range(6))
    assert writer.transactions - before == 6
    assert rows(writer) == list(range(6))
    # With time enough, the same writes share one transaction.
    monkeypatch.setattr(sqlite_writer, "HOLD_S", 60.0)
    before = writer.transactions
    await asyncio.gather(*(writer.write(noted(n)) for n in range(6, 12)))
    assert writer.transactions - before == 1
