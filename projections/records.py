"""The record index: one SQLite database folded from the records topic (statements in
projections/record_fold.py), and the queries the API, the CLI and the workers ask of it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from events import model
from projections import citations, eprints, record_fold, tracking

_COLUMNS = "uri, did, collection, rkey, cid, value, indexed_at, deleted"
# What two folds of the same log agree on, table by table: (name, table, columns, how many
# leading columns make a row's key, whether that key is the table's primary key). The
# full-text rows are compared by uri, not rowid.
_COMPARED = (
    ("record", "records", _COLUMNS, 1, True),
    ("citations", "citation_sets", "uri, document_cid, method, extracted_at, event_id", 1, True),
    (
        "citation",
        "extracted_citations",
        "uri, position, title, doi, arxiv_id, year, authors, raw, matched_uri, matched_by",
        2,
        True,
    ),
    ("key", "eprint_keys", "kind, key, uri", 3, True),
    ("text", "eprint_text", "uri, title, abstract", 1, False),
    ("repo", "repos", "did, pds, rev, commit_cid, synced_at", 1, True),
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
    schema = record_fold.SCHEMA
    scratch_schema = record_fold.AUDIT_SCHEMA

    async def _current(self) -> aiosqlite.Connection:
        """The connection queries use (a reader that follows the pointer may move first)."""
        return self.conn

    async def apply(self, events: list[model.AnyEvent], positions: dict[int, int]) -> None:
        await self.commit_in_one_hop(positions, self.prepare(events))

    def prepare(self, events: list[model.AnyEvent]) -> Callable[[sqlite3.Connection], None]:
        """The write that folds `events`, its statements built now (on the caller's thread):
        a replay builds the next batch's while the connection's thread writes the last."""
        statements = list(record_fold.runs(events))

        def write(conn: sqlite3.Connection) -> None:
            for sql, rows in statements:
                conn.executemany(sql, rows)

        return write

    async def live_count(self, collection: str | None = None) -> int:
        conn = await self._current()
        sql, args = "SELECT COUNT(*) FROM records WHERE deleted = 0", ()
        if collection is not None:
            sql, args = sql + " AND collection = ?", (collection,)
        async with conn.execute(sql, args) as cur:
            (count,) = await cur.fetchone()
        return count

    async def live_page(
        self, after_uri: str, limit: int, collection: str | None = None, values: bool = False
    ) -> list[IndexedRecord]:
        """Live records with uri > after_uri, in uri order: a stream in pages (keyset)."""
        conn = await self._current()
        sql = f"SELECT {_COLUMNS} FROM records WHERE deleted = 0 AND uri > ?"
        args: tuple = (after_uri,)
        if collection is not None:
            sql, args = sql + " AND collection = ?", (*args, collection)
        async with conn.execute(sql + " ORDER BY uri LIMIT ?", (*args, limit)) as cur:
            rows = await cur.fetchall()
        return [_record(r, values) for r in rows]

    async def live_uris(self, did: str, collections: list[str]) -> list[str]:
        """Live record uris of one repo in these collections, sorted."""
        conn = await self._current()
        marks = ", ".join("?" for _ in collections)
        async with conn.execute(
            f"SELECT uri FROM records WHERE did = ? AND collection IN ({marks}) AND deleted = 0 "
            "ORDER BY uri",
            (did, *collections),
        ) as cur:
            return [uri for (uri,) in await cur.fetchall()]

    async def rows(self) -> list[tuple]:
        """Every row, sorted by uri: what an audit compares."""
        conn = await self._current()
        async with conn.execute(f"SELECT {_COLUMNS} FROM records ORDER BY uri") as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def snapshot(self) -> dict[str, tuple]:
        """Everything the index holds, keyed for comparison: records, the citation sets with
        their entries, match keys and full-text rows. Two folds of the same log are equal."""
        conn = await self._current()
        out: dict[str, tuple] = {}
        for name, table, columns, key_columns, _ in _COMPARED:
            async with conn.execute(f"SELECT {columns} FROM {table}") as cur:
                for row in await cur.fetchall():
                    out[" ".join([name, *map(str, row[:key_columns])])] = tuple(row)
        return out

    async def count(self) -> int:
        """Rows in the records table, tombstones included."""
        conn = await self._current()
        async with conn.execute("SELECT COUNT(*) FROM records") as cur:
            (count,) = await cur.fetchone()
        return count

    async def differences(self, other: Path) -> list[str]:
        """Where the index in `other` differs from this one, a line per differing row key
        (what `snapshot` would show), found by SQLite itself: both ways of EXCEPT per table,
        then the two sides of each differing key."""

        def compare(conn: sqlite3.Connection) -> list[str]:
            conn.execute("ATTACH DATABASE ? AS other", (str(other),))
            # The full-text rows' EXCEPT sorts in memory, not in temporary files.
            conn.execute("PRAGMA temp_store = MEMORY")
            try:
                return [line for spec in _COMPARED for line in _differing(conn, *spec)]
            finally:
                conn.execute("PRAGMA temp_store = DEFAULT")
                conn.execute("DETACH DATABASE other")

        await self._current()
        return await self.run(compare)

    async def synced_repos(self) -> dict[str, tuple[str, str]]:
        """did -> (pds, rev) of every repository last read whole and verified."""
        conn = await self._current()
        async with conn.execute("SELECT did, pds, rev FROM repos") as cur:
            return {did: (pds, rev) for did, pds, rev in await cur.fetchall()}

    async def live_of(self, did: str, prefix: str = "pub.chive.") -> dict[str, tuple[str, str]]:
        """`collection/rkey` -> (uri, cid) of the repo's live records in collections starting
        with `prefix`."""
        conn = await self._current()
        async with conn.execute(
            "SELECT collection, rkey, uri, cid FROM records WHERE did = ? AND deleted = 0 "
            "AND collection >= ? AND collection < ?",
            (did, prefix, prefix + "\uffff"),
        ) as cur:
            return {f"{c}/{k}": (uri, cid) for c, k, uri, cid in await cur.fetchall()}

    async def get(self, uri: str) -> IndexedRecord | None:
        conn = await self._current()
        async with conn.execute(f"SELECT {_COLUMNS} FROM records WHERE uri = ?", (uri,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _record(row, True)

    async def stats(self) -> dict[str, Any]:
        """Live records per collection, plus totals."""
        conn = await self._current()
        async with conn.execute(
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
        conn = await self._current()
        async with conn.execute(
            "SELECT uri, cid FROM records WHERE deleted = 0 ORDER BY uri"
        ) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    # -- eprints and citations -------------------------------------------------------------
    async def match_eprint(self, kind: str, key: str) -> str | None:
        """The live submission with this DOI or title key (the smallest uri if several)."""
        conn = await self._current()
        async with conn.execute(
            "SELECT MIN(uri) FROM eprint_keys WHERE kind = ? AND key = ?", (kind, key)
        ) as cur:
            (uri,) = await cur.fetchone()
        return uri

    async def citations(self, eprint_uri: str) -> list[dict[str, Any]]:
        """The eprint's citations, user-provided and extracted (projections/citations.py)."""
        conn = await self._current()
        # The collection is spelled out so SQLite can use the partial index records_cites.
        async with conn.execute(
            "SELECT uri, value FROM records WHERE collection = 'pub.chive.eprint.citation' "
            "AND deleted = 0 AND json_extract(value, '$.eprintUri') = ? ORDER BY uri",
            (eprint_uri,),
        ) as cur:
            user_rows = await cur.fetchall()
        async with conn.execute(
            "SELECT title, doi, arxiv_id, year, authors, raw, matched_uri, matched_by "
            "FROM extracted_citations WHERE uri = ? ORDER BY position",
            (eprint_uri,),
        ) as cur:
            extracted = await cur.fetchall()
        return citations.merge(user_rows, extracted)

    async def search(self, text: str, limit: int = 20) -> list[dict[str, Any]]:
        """Live eprint submissions whose title or abstract match `text` (FTS5, best first).
        The words are matched as given, each as a prefix-free term; FTS syntax is not
        interpreted, so any input is a valid query."""
        terms = [t for t in eprints.normalize_title(text).split() if t]
        if not terms:
            return []
        query = " ".join(f'"{t}"' for t in terms)
        conn = await self._current()
        async with conn.execute(
            "SELECT uri, title, bm25(eprint_text) FROM eprint_text WHERE eprint_text MATCH ? "
            "ORDER BY bm25(eprint_text), uri LIMIT ?",
            (query, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [{"uri": uri, "title": title} for uri, title, _ in rows]


def _record(row: tuple, values: bool) -> IndexedRecord:
    value = msgspec.json.decode(row[5]) if values and row[5] is not None else None
    return IndexedRecord(*row[:5], value, row[6], bool(row[7]))


def _differing(
    conn: sqlite3.Connection, name: str, table: str, columns: str, key_columns: int, keyed: bool
) -> list[str]:
    names = columns.split(", ")
    keys, values = names[:key_columns], names[key_columns:]
    differing: set[tuple] = set()
    if keyed:
        # Row by row along the primary key: a join walks both tables' key indexes, with no
        # temporary copy of either table (an EXCEPT sorts a whole side first).
        on = " AND ".join(f"b.{k} = a.{k}" for k in keys)
        changed = " OR ".join([f"b.{keys[0]} IS NULL", *(f"a.{v} IS NOT b.{v}" for v in values)])
        picked = ", ".join(f"a.{k}" for k in keys)
        differing.update(
            conn.execute(
                f"SELECT {picked} FROM main.{table} a LEFT JOIN other.{table} b ON {on} "
                f"WHERE {changed}"
            )
        )
        picked = ", ".join(f"b.{k}" for k in keys)
        differing.update(
            conn.execute(
                f"SELECT {picked} FROM other.{table} b "
                f"WHERE NOT EXISTS (SELECT 1 FROM main.{table} a WHERE {on})"
            )
        )
    else:
        for a, b in (("main", "other"), ("other", "main")):
            differing.update(
                conn.execute(
                    f"SELECT {', '.join(keys)} FROM (SELECT {columns} FROM {a}.{table} "
                    f"EXCEPT SELECT {columns} FROM {b}.{table})"
                )
            )
    where = " AND ".join(f"{k} IS ?" for k in keys)
    lines = []
    for key in sorted(differing, key=repr):
        mine, theirs = (
            conn.execute(f"SELECT {columns} FROM {db}.{table} WHERE {where}", key).fetchone()
            for db in ("main", "other")
        )
        label = " ".join([name, *map(str, key)])
        lines.append(f"records {label}: live {mine!r} != replayed {theirs!r}")
    return lines
