"""The record index: one row per at-uri, folded from record events.

Idempotent by content: an upsert whose cid the row already holds changes nothing, a delete keeps
a tombstone. So a worker that re-emits a page after a crash never indexes a record twice.
"""

from __future__ import annotations

from typing import Any

import msgspec

from events import model
from projections import tracking

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    uri TEXT PRIMARY KEY, did TEXT NOT NULL, collection TEXT NOT NULL, rkey TEXT NOT NULL,
    cid TEXT NOT NULL, value TEXT, indexed_at INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_collection ON records (collection, deleted);
CREATE INDEX IF NOT EXISTS records_did ON records (did);
"""


_UPSERT = (
    "INSERT INTO records (uri, did, collection, rkey, cid, value, indexed_at, deleted) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (uri) DO UPDATE SET cid = excluded.cid, "
    "value = excluded.value, indexed_at = excluded.indexed_at, deleted = 0 "
    "WHERE records.cid != excluded.cid OR records.deleted = 1"
)
_DELETE = (
    "INSERT INTO records (uri, did, collection, rkey, cid, value, indexed_at, deleted) "
    "VALUES (?, ?, ?, ?, '', NULL, ?, 1) ON CONFLICT (uri) DO UPDATE "
    "SET deleted = 1, indexed_at = excluded.indexed_at WHERE records.deleted = 0"
)


class IndexedRecord(msgspec.Struct):
    uri: str
    did: str
    collection: str
    rkey: str
    cid: str
    value: Any
    indexed_at: int
    deleted: bool


class RecordIndex(tracking.TrackedStore):
    topic = model.RECORDS_TOPIC
    schema = _SCHEMA

    async def apply(self, events: list[model.AnyEvent], positions: dict[int, int]) -> None:
        # Consecutive events of one kind go to SQLite in one executemany: one thread round trip
        # per run instead of per record, with the log's order kept between runs.
        runs: list[tuple[str, list[tuple]]] = []
        for event in events:
            if isinstance(event, model.RecordUpserted):
                sql, row = (
                    _UPSERT,
                    (
                        event.uri,
                        event.did,
                        event.collection,
                        event.rkey,
                        event.cid,
                        bytes(event.value).decode(),
                        event.occurred_at,
                    ),
                )
            elif isinstance(event, model.RecordDeleted):
                sql, row = (
                    _DELETE,
                    (event.uri, event.did, event.collection, event.rkey, event.occurred_at),
                )
            else:
                continue
            if runs and runs[-1][0] is sql:
                runs[-1][1].append(row)
            else:
                runs.append((sql, [row]))
        async with self.transaction(positions) as conn:
            for sql, rows in runs:
                await conn.executemany(sql, rows)

    async def live_count(self) -> int:
        async with self.conn.execute("SELECT COUNT(*) FROM records WHERE deleted = 0") as cur:
            (count,) = await cur.fetchone()
        return count

    async def live_page(self, after_uri: str, limit: int) -> list[IndexedRecord]:
        """Live records with uri > after_uri, in uri order: a stream in pages (keyset)."""
        async with self.conn.execute(
            "SELECT uri, did, collection, rkey, cid, value, indexed_at, deleted FROM records "
            "WHERE deleted = 0 AND uri > ? ORDER BY uri LIMIT ?",
            (after_uri, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [IndexedRecord(*r[:5], None, r[6], False) for r in rows]

    async def rows(self) -> list[tuple]:
        """Every row, sorted by uri: what an audit compares."""
        async with self.conn.execute(
            "SELECT uri, did, collection, rkey, cid, value, indexed_at, deleted "
            "FROM records ORDER BY uri"
        ) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def get(self, uri: str) -> IndexedRecord | None:
        async with self.conn.execute(
            "SELECT uri, did, collection, rkey, cid, value, indexed_at, deleted "
            "FROM records WHERE uri = ?",
            (uri,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        value = msgspec.json.decode(row[5]) if row[5] is not None else None
        return IndexedRecord(*row[:5], value, row[6], bool(row[7]))

    async def stats(self) -> dict[str, Any]:
        """Live records per collection, plus totals."""
        async with self.conn.execute(
            "SELECT collection, SUM(deleted = 0), SUM(deleted = 1) FROM records "
            "GROUP BY collection ORDER BY collection"
        ) as cur:
            rows = await cur.fetchall()
        collections = {c: live for c, live, _ in rows if live}
        return {
            "collections": collections,
            "live": sum(live for _, live, _ in rows),
            "deleted": sum(dead for _, _, dead in rows),
        }

    async def uris(self) -> list[tuple[str, str]]:
        """(uri, cid) of every live record, sorted: for comparisons in tests and audits."""
        async with self.conn.execute(
            "SELECT uri, cid FROM records WHERE deleted = 0 ORDER BY uri"
        ) as cur:
            return [tuple(r) for r in await cur.fetchall()]
