"""The operations read model: a pure fold of lifecycle events, and its SQLite store.

The fold is the one definition of an operation's state: the API's projection, the workers'
view of their own operations and an audit replay all call it. Rules that make it safe under
redelivery and late events: a request creates an operation once; a finished operation never
changes again; `records_processed` only grows until the final count of a completion.
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from events import model
from projections import tracking

TERMINAL = frozenset({"completed", "failed", "cancelled"})


# gc=False: an operation holds plain data (its dicts and lists hold JSON values, never an
# operation), so it can be in no reference cycle; untracked, the fold's new state per event
# costs the collector nothing.
class Operation(msgspec.Struct, kw_only=True, gc=False):
    id: str
    type: str
    status: str
    started_at: int
    params: dict[str, Any]
    started_by: str
    dedupe_key: str
    updated_at: int
    records_processed: int = 0
    records_skipped: int = 0
    skip_reasons: dict[str, int] = {}
    records_deleted: int = 0
    total_records: int | None = None
    completed_at: int | None = None
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0
    checkpoint: dict[str, Any] | None = None
    sources: list[str] = []
    colocated: bool = False
    # From the final event: where the records topic ended when the operation finished.
    records_through: dict[int, int] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def fold(state: Operation | None, event: model.OperationEvent) -> Operation | None:
    """Next state of one operation; pure, time taken only from the event."""
    if type(event) is model.BackfillRequested:
        if state is not None:
            return state
        return Operation(
            id=event.operation_id,
            type=event.backfill_type,
            status="running",
            started_at=event.occurred_at,
            params=dict(event.params),
            started_by=event.requested_by,
            dedupe_key=event.dedupe_key,
            updated_at=event.occurred_at,
            colocated=event.colocated,
        )
    if state is None or state.status in TERMINAL:
        return state
    # A shallow copy the fold owns, its changed fields set in place: the same new state as
    # msgspec.structs.replace, without building keyword arguments per event (a replay folds
    # every progress event of every operation).
    new = state.__copy__()
    if event.occurred_at > state.updated_at:
        new.updated_at = event.occurred_at
    step = _STEPS.get(type(event))
    if step is not None:
        step(new, event)
    return new


# What each event changes of a running operation: `new` is the fold's fresh copy of the state.
def _started(new: Operation, event: model.BackfillStarted) -> None:
    if event.attempt > new.attempts:
        new.attempts = event.attempt


def _progressed(new: Operation, event: model.BackfillProgressed) -> None:
    if event.records_processed > new.records_processed:
        new.records_processed = event.records_processed
    if event.total_records is not None:
        new.total_records = event.total_records
    if event.checkpoint is not None:
        new.checkpoint = event.checkpoint


def _completed(new: Operation, event: model.BackfillCompleted) -> None:
    new.status = "completed"
    new.records_processed = event.records_processed
    new.completed_at = event.occurred_at
    new.sources = list(event.sources)
    new.records_skipped = event.records_skipped
    new.skip_reasons = dict(event.skip_reasons)
    new.records_deleted = event.records_deleted
    new.records_through = event.records_through
    if event.total_records is not None:
        new.total_records = event.total_records


def _failed(new: Operation, event: model.BackfillFailed) -> None:
    new.status = "failed"
    new.error = event.error
    new.completed_at = event.occurred_at
    new.records_through = event.records_through
    if event.records_processed is not None and event.records_processed > new.records_processed:
        new.records_processed = event.records_processed


def _cancel_requested(new: Operation, event: model.BackfillCancelRequested) -> None:
    new.cancel_requested = True


def _cancelled(new: Operation, event: model.BackfillCancelled) -> None:
    new.status = "cancelled"
    new.completed_at = event.occurred_at
    new.records_through = event.records_through
    if event.records_processed is not None and event.records_processed > new.records_processed:
        new.records_processed = event.records_processed


_STEPS: dict[type, Any] = {
    model.BackfillStarted: _started,
    model.BackfillProgressed: _progressed,
    model.BackfillCompleted: _completed,
    model.BackfillFailed: _failed,
    model.BackfillCancelRequested: _cancel_requested,
    model.BackfillCancelled: _cancelled,
}


def duplicate_of(
    request: model.BackfillRequested, unfinished: Iterable[Operation]
) -> Operation | None:
    """The operation a request duplicates, if any: a co-located request whose dedupe key names
    a co-located operation still running at this point of the log creates no operation of its
    own; its id becomes another name of that one. Co-location puts every such request and
    operation in one partition, so each API replica, the worker of that partition and an audit
    replay, folding it in order, reach the same answer. Requests from before co-location
    never count as duplicates, nor are they duplicated."""
    if not request.colocated:
        return None
    for op in unfinished:
        if (
            op.colocated
            and not op.finished
            and op.dedupe_key == request.dedupe_key
            and op.id != request.operation_id
        ):
            return op
    return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL,
    started_at INTEGER NOT NULL, dedupe_key TEXT NOT NULL, state BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_newest ON operations (started_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS operations_dedupe ON operations (dedupe_key, status);
CREATE TABLE IF NOT EXISTS applied_events (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
-- Ids of duplicate requests, each another name of the operation it duplicates.
CREATE TABLE IF NOT EXISTS aliases (id TEXT PRIMARY KEY, operation_id TEXT NOT NULL) WITHOUT ROWID;
"""

_encode = msgspec.json.Encoder().encode
_decode_operation = msgspec.json.Decoder(Operation).decode


class InvalidCursor(ValueError):
    pass


def encode_cursor(op: Operation) -> str:
    return base64.urlsafe_b64encode(f"{op.started_at}:{op.id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        started_at, op_id = raw.split(":", 1)
        return int(started_at), op_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not one this service issued") from exc


def _apply(conn: sqlite3.Connection, events: list[model.OperationEvent]) -> list[Operation]:
    """Folds `events` into the tables; the operations it read or changed, as they now are."""
    cache: dict[str, Operation | None] = {}
    for event in events:
        cur = conn.execute(
            "INSERT OR IGNORE INTO applied_events (event_id) VALUES (?)", (event.event_id,)
        )
        op_id = event.operation_id
        if op_id not in cache:
            cache[op_id] = _load(conn, op_id)
        if cur.rowcount == 0:
            # Folded before (a redelivery, or another process folding into this file): the
            # operation is listed as the table has it.
            continue
        if cache[op_id] is None and isinstance(event, model.BackfillRequested):
            original = duplicate_of(event, _running(conn, event.dedupe_key))
            if original is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO aliases (id, operation_id) VALUES (?, ?)",
                    (op_id, original.id),
                )
                continue
        new = fold(cache[op_id], event)
        if new is not None and new is not cache[op_id]:
            cache[op_id] = new
            conn.execute(
                "INSERT INTO operations (id, type, status, started_at, dedupe_key, state) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "status = excluded.status, state = excluded.state",
                (new.id, new.type, new.status, new.started_at, new.dedupe_key, _encode(new)),
            )
    return [op for op in cache.values() if op is not None]


def _load(conn: sqlite3.Connection, op_id: str) -> Operation | None:
    row = conn.execute("SELECT state FROM operations WHERE id = ?", (op_id,)).fetchone()
    return _decode_operation(row[0]) if row else None


def _get(conn: sqlite3.Connection, op_id: str) -> Operation | None:
    op = _load(conn, op_id)
    if op is not None:
        return op
    row = conn.execute("SELECT operation_id FROM aliases WHERE id = ?", (op_id,)).fetchone()
    return _load(conn, row[0]) if row else None


def _newest_first(op: Operation) -> tuple[int, str]:
    return op.started_at, op.id


def _running(conn: sqlite3.Connection, dedupe_key: str) -> list[Operation]:
    rows = conn.execute(
        "SELECT state FROM operations WHERE dedupe_key = ? AND status = 'running' "
        "ORDER BY started_at DESC, id DESC",
        (dedupe_key,),
    ).fetchall()
    return [_decode_operation(r[0]) for r in rows]


class OperationsStore(tracking.TrackedStore):
    """SQLite store of the operations projection; positions tracked with the state.

    The running operations and the positions they were folded to are also kept in memory,
    changed only once a fold's transaction has committed: every trigger asks whether its
    request duplicates a running one, and answers from here without a hop to the
    connection's thread (0.2 ms at the median, 1.6 ms at p99 under `up`)."""

    topic = model.OPERATIONS_TOPIC
    schema = _SCHEMA

    def __init__(self, path: Path, scratch: bool = False) -> None:
        super().__init__(path, scratch)
        self._running: dict[str, dict[str, Operation]] = {}  # dedupe key -> id -> operation
        self._folded: dict[int, int] = {}

    async def open(self) -> None:
        await super().open()
        topic = self.topic

        def read(conn: sqlite3.Connection) -> tuple[list[Operation], dict[int, int]]:
            rows = conn.execute("SELECT state FROM operations WHERE status = 'running'")
            return [_decode_operation(r[0]) for r in rows], tracking.read_positions(conn, topic)

        running, self._folded = await self.run(read)
        self._running = {}
        self._remember(running)

    async def apply(self, events: list[model.AnyEvent], positions: dict[int, int]) -> None:
        """Fold a batch and store `positions` in one transaction (one hop: the API waits on
        this fold to answer reads of its own writes)."""
        batch = [e for e in events if isinstance(e, model.OperationEvent)]
        now = await self.commit_in_one_hop(positions, lambda conn: _apply(conn, batch))
        self._remember(now)
        self._folded.update(positions)

    def _remember(self, ops: list[Operation]) -> None:
        for op in ops:
            same_key = self._running.setdefault(op.dedupe_key, {})
            if op.status == "running":
                same_key[op.id] = op
            else:
                same_key.pop(op.id, None)
                if not same_key:
                    del self._running[op.dedupe_key]

    async def get(self, op_id: str) -> Operation | None:
        """The operation, by its id or by the id of a request that duplicated it."""
        return await self.run(lambda conn: _get(conn, op_id))

    async def running_as_of(self, dedupe_key: str) -> tuple[Operation | None, dict[int, int]]:
        """(the running operation of `dedupe_key`, the positions folded into the state that
        answer comes from), read together: the newest, as `_running` orders them."""
        same_key = self._running.get(dedupe_key)
        newest = max(same_key.values(), key=_newest_first) if same_key else None
        return newest, dict(self._folded)

    async def list(
        self,
        *,
        statuses: tuple[str, ...] | None = None,
        type: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[Operation], str | None]:
        """Newest first (start time, then id), keyset-paginated."""
        where, args = [], []
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if type is not None:
            where.append("type = ?")
            args.append(type)
        if cursor is not None:
            started_at, op_id = decode_cursor(cursor)
            where.append("(started_at < ? OR (started_at = ? AND id < ?))")
            args.extend([started_at, started_at, op_id])
        sql = "SELECT state FROM operations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC, id DESC LIMIT ?"
        args.append(limit + 1)
        async with self.conn.execute(sql, args) as cur:
            rows = await cur.fetchall()
        ops = [_decode_operation(r[0]) for r in rows[:limit]]
        next_cursor = encode_cursor(ops[-1]) if len(rows) > limit else None
        return ops, next_cursor

    async def aliases(self) -> dict[str, str]:
        """Duplicate request id -> the operation it names."""
        async with self.conn.execute("SELECT id, operation_id FROM aliases ORDER BY id") as cur:
            return dict(await cur.fetchall())

    async def all(self) -> list[Operation]:
        async with self.conn.execute("SELECT state FROM operations ORDER BY id") as cur:
            return [_decode_operation(r[0]) for r in await cur.fetchall()]
