"""The record index: one row per at-uri, folded from record events.

Idempotent by content: an upsert whose cid the row already holds changes nothing, a delete keeps
a tombstone. So a worker that re-emits a page after a crash never indexes a record twice.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from events import model
from projections import eprints, index_location, tracking

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    uri TEXT PRIMARY KEY, did TEXT NOT NULL, collection TEXT NOT NULL, rkey TEXT NOT NULL,
    cid TEXT NOT NULL, value TEXT, indexed_at INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_collection ON records (collection, deleted);
CREATE INDEX IF NOT EXISTS records_did ON records (did);
CREATE INDEX IF NOT EXISTS records_cites ON records (json_extract(value, '$.eprintUri'))
    WHERE collection = 'pub.chive.eprint.citation';
-- What a citation can match a live eprint submission by: ('doi', doi) or ('title', title key).
CREATE TABLE IF NOT EXISTS eprint_keys (
    kind TEXT NOT NULL, key TEXT NOT NULL, uri TEXT NOT NULL, PRIMARY KEY (kind, key, uri)
);
CREATE INDEX IF NOT EXISTS eprint_keys_uri ON eprint_keys (uri);
-- Full-text search over live submissions; rowid = the records row's rowid.
CREATE VIRTUAL TABLE IF NOT EXISTS eprint_text USING fts5 (uri UNINDEXED, title, abstract);
-- The extracted reference list of each eprint, replaced as a whole by each CitationsExtracted.
CREATE TABLE IF NOT EXISTS citation_sets (
    uri TEXT PRIMARY KEY, document_cid TEXT NOT NULL, method TEXT NOT NULL,
    extracted_at INTEGER NOT NULL, event_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS extracted_citations (
    uri TEXT NOT NULL, position INTEGER NOT NULL, title TEXT, doi TEXT, arxiv_id TEXT,
    year INTEGER, authors TEXT NOT NULL, raw TEXT, matched_uri TEXT, matched_by TEXT,
    PRIMARY KEY (uri, position)
);
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
# Submissions also feed the match keys and the full-text index (both dropped on delete).
_KEYS_DELETE = "DELETE FROM eprint_keys WHERE uri = ?"
_KEYS_INSERT = "INSERT OR IGNORE INTO eprint_keys (kind, key, uri) VALUES (?, ?, ?)"
_TEXT_DELETE = "DELETE FROM eprint_text WHERE rowid = (SELECT rowid FROM records WHERE uri = ?)"
_TEXT_INSERT = (
    "INSERT INTO eprint_text (rowid, uri, title, abstract) "
    "SELECT rowid, uri, ?, ? FROM records WHERE uri = ?"
)
_CITATIONS_DELETE = "DELETE FROM extracted_citations WHERE uri = ?"
_CITATION_SET_DELETE = "DELETE FROM citation_sets WHERE uri = ?"
_CITATION_INSERT = (
    "INSERT INTO extracted_citations (uri, position, title, doi, arxiv_id, year, authors, raw, "
    "matched_uri, matched_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_CITATION_SET_UPSERT = (
    "INSERT INTO citation_sets (uri, document_cid, method, extracted_at, event_id) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (uri) DO UPDATE SET document_cid = excluded.document_cid, "
    "method = excluded.method, extracted_at = excluded.extracted_at, event_id = excluded.event_id"
)

_COLUMNS = "uri, did, collection, rkey, cid, value, indexed_at, deleted"
# What a snapshot holds besides the records: (key prefix, query, how many columns make the key).
_SNAPSHOT_TABLES = (
    ("citations", "SELECT * FROM citation_sets", 1),
    ("citation", "SELECT * FROM extracted_citations", 2),
    ("key", "SELECT kind, key, uri FROM eprint_keys", 3),
    ("text", "SELECT uri, title, abstract FROM eprint_text", 1),
)


def _steps(event: model.AnyEvent) -> list[tuple[str, list[tuple]]]:
    """The statements that fold one event, in order."""
    if isinstance(event, model.RecordUpserted):
        value = bytes(event.value).decode()
        steps = [
            (
                _UPSERT,
                [
                    (
                        event.uri,
                        event.did,
                        event.collection,
                        event.rkey,
                        event.cid,
                        value,
                        event.occurred_at,
                    )
                ],
            )
        ]
        if event.collection == eprints.SUBMISSION:
            decoded = _json_or_none(value)
            steps += [
                (_KEYS_DELETE, [(event.uri,)]),
                (_KEYS_INSERT, [(k, v, event.uri) for k, v in eprints.match_keys(decoded)]),
                (_TEXT_DELETE, [(event.uri,)]),
                (
                    _TEXT_INSERT,
                    [(eprints.title_of(decoded), eprints.abstract_of(decoded), event.uri)],
                ),
            ]
        return steps
    if isinstance(event, model.RecordDeleted):
        steps = [
            (
                _DELETE,
                [(event.uri, event.did, event.collection, event.rkey, event.occurred_at)],
            )
        ]
        if event.collection == eprints.SUBMISSION:
            steps += [
                (_KEYS_DELETE, [(event.uri,)]),
                (_TEXT_DELETE, [(event.uri,)]),
                (_CITATIONS_DELETE, [(event.uri,)]),
                (_CITATION_SET_DELETE, [(event.uri,)]),
            ]
        return steps
    if isinstance(event, model.CitationsExtracted):
        rows = [
            (
                event.uri,
                i,
                c.title,
                c.doi,
                c.arxiv_id,
                c.year,
                msgspec.json.encode(c.authors).decode(),
                c.raw,
                c.matched_uri,
                c.matched_by,
            )
            for i, c in enumerate(event.citations)
        ]
        return [
            (_CITATIONS_DELETE, [(event.uri,)]),
            (_CITATION_INSERT, rows),
            (
                _CITATION_SET_UPSERT,
                [
                    (
                        event.uri,
                        event.document_cid,
                        event.method,
                        event.occurred_at,
                        event.event_id,
                    )
                ],
            ),
        ]
    return []


def _json_or_none(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None


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

    def __init__(self, path: Path, follow: Path | None = None) -> None:
        """`follow`: a data dir; this reader then serves whichever index its pointer names
        and moves to the new one on the first query after fullReindex switches it."""
        super().__init__(path)
        self._follow = follow
        self._stamp: tuple[int, int] | None = None

    @classmethod
    def reader_in(cls, data_dir: Path) -> RecordIndex:
        return cls(index_location.active_path(data_dir), follow=data_dir)

    async def open(self) -> None:
        if self._follow is None:
            await super().open()
            return
        # A reader never creates the index: if the pointer moved on and the file it named is
        # gone already, read the pointer again.
        for _ in range(10):
            self._stamp = index_location.pointer_stamp(self._follow)
            self.path = index_location.active_path(self._follow)
            try:
                self._conn = await tracking.connect(self.path, self.schema, create=False)
                return
            except sqlite3.OperationalError:
                await asyncio.sleep(0.05)
        raise RuntimeError(f"no record index in {self._follow}")

    async def _current(self) -> aiosqlite.Connection:
        if self._follow is not None and index_location.pointer_stamp(self._follow) != self._stamp:
            old = self._conn
            await self.open()
            if old is not None:
                await old.close()
        return self.conn

    async def adopt(self, other: RecordIndex) -> None:
        """Serve from `other`'s database from now on (its connection moves here, this one's
        closes). The caller has stopped writes to both."""
        old, self._conn, other._conn = self._conn, other._conn, None
        self.path = other.path
        if old is not None:
            await old.close()

    async def apply(self, events: list[model.AnyEvent], positions: dict[int, int]) -> None:
        # Consecutive statements of one kind go to SQLite in one executemany: one thread round
        # trip per run instead of per record, with the log's order kept between runs.
        runs: list[tuple[str, list[tuple]]] = []
        for event in events:
            for sql, rows in _steps(event):
                if not rows:
                    continue
                if runs and runs[-1][0] is sql:
                    runs[-1][1].extend(rows)
                else:
                    runs.append((sql, list(rows)))
        async with self.transaction(positions) as conn:
            for sql, rows in runs:
                await conn.executemany(sql, rows)

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
        out: dict[str, tuple] = {f"record {r[0]}": tuple(r) for r in await self.rows()}
        for name, sql, key_columns in _SNAPSHOT_TABLES:
            async with conn.execute(sql) as cur:
                for row in await cur.fetchall():
                    out[" ".join([name, *map(str, row[:key_columns])])] = tuple(row)
        return out

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
        """The eprint's citations: user-provided `pub.chive.eprint.citation` records first,
        then extracted ones, minus extracted entries that a user record already gives (same
        DOI, same cited eprint or same title): a user's record always wins."""
        conn = await self._current()
        # The collection is spelled out so SQLite can use the partial index records_cites.
        async with conn.execute(
            "SELECT uri, value FROM records WHERE collection = 'pub.chive.eprint.citation' "
            "AND deleted = 0 AND json_extract(value, '$.eprintUri') = ? ORDER BY uri",
            (eprint_uri,),
        ) as cur:
            user_rows = await cur.fetchall()
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for uri, value in user_rows:
            work = _json_or_none(value) or {}
            work = work.get("citedWork") if isinstance(work.get("citedWork"), dict) else {}
            entry = {"source": "user", "uri": uri, **work}
            out.append(entry)
            seen |= _identity(work.get("doi"), work.get("chiveUri"), work.get("title"))
        async with conn.execute(
            "SELECT title, doi, arxiv_id, year, authors, raw, matched_uri, matched_by "
            "FROM extracted_citations WHERE uri = ? ORDER BY position",
            (eprint_uri,),
        ) as cur:
            extracted = await cur.fetchall()
        for title, doi, arxiv_id, year, authors, raw, matched, matched_by in extracted:
            if _identity(doi, matched, title) & seen:
                continue
            entry = {
                "source": "extracted",
                "title": title,
                "doi": doi,
                "arxivId": arxiv_id,
                "year": year,
                "authors": msgspec.json.decode(authors),
                "raw": raw,
                "chiveUri": matched,
                "matchedBy": matched_by,
            }
            out.append({k: v for k, v in entry.items() if v not in (None, [])})
        return out

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


def _identity(doi: Any, chive_uri: Any, title: Any) -> set[tuple[str, str]]:
    ids: set[tuple[str, str]] = set()
    if isinstance(doi, str) and (d := eprints.normalize_doi(doi)):
        ids.add(("doi", d))
    if isinstance(chive_uri, str) and chive_uri:
        ids.add(("uri", chive_uri))
    if isinstance(title, str) and (t := eprints.title_key(title)):
        ids.add(("title", t))
    return ids


def _record(row: tuple, values: bool) -> IndexedRecord:
    value = msgspec.json.decode(row[5]) if values and row[5] is not None else None
    return IndexedRecord(*row[:5], value, row[6], bool(row[7]))
