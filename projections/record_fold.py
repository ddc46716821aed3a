"""How record events fold into the record index: its schema and, per event, the SQL
statements that apply it. Pure: no connection here, so the fold is testable without SQLite
and one batch of events becomes one list of statement runs.

Idempotent by content: an upsert whose cid the row already holds changes nothing, a delete keeps
a tombstone. So a worker that re-emits a page after a crash never indexes a record twice.
"""

from __future__ import annotations

from typing import Any

import msgspec

from events import model
from projections import eprints

_TABLES = """
CREATE TABLE IF NOT EXISTS records (
    uri TEXT PRIMARY KEY, did TEXT NOT NULL, collection TEXT NOT NULL, rkey TEXT NOT NULL,
    cid TEXT NOT NULL, value TEXT, indexed_at INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0
);
-- What a citation can match a live eprint submission by: ('doi', doi) or ('title', title key).
CREATE TABLE IF NOT EXISTS eprint_keys (
    kind TEXT NOT NULL, key TEXT NOT NULL, uri TEXT NOT NULL, PRIMARY KEY (kind, key, uri)
);
CREATE INDEX IF NOT EXISTS eprint_keys_uri ON eprint_keys (uri);
-- Full-text search over live submissions; rowid = the records row's rowid.
{text_table};
-- The extracted reference list of each eprint, replaced as a whole by each CitationsExtracted.
CREATE TABLE IF NOT EXISTS citation_sets (
    uri TEXT PRIMARY KEY, document_cid TEXT NOT NULL, method TEXT NOT NULL,
    extracted_at INTEGER NOT NULL, event_id TEXT NOT NULL
);
-- The revision each repository was last read whole and verified at (RepoSynced).
CREATE TABLE IF NOT EXISTS repos (
    did TEXT PRIMARY KEY, pds TEXT NOT NULL, rev TEXT NOT NULL, commit_cid TEXT NOT NULL,
    synced_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS extracted_citations (
    uri TEXT NOT NULL, position INTEGER NOT NULL, title TEXT, doi TEXT, arxiv_id TEXT,
    year INTEGER, authors TEXT NOT NULL, raw TEXT, matched_uri TEXT, matched_by TEXT,
    PRIMARY KEY (uri, position)
);
"""


# What the API's and the workers' queries find records by (the fold's own statements go by
# uri alone).
_LOOKUPS = """
CREATE INDEX IF NOT EXISTS records_collection ON records (collection, deleted);
CREATE INDEX IF NOT EXISTS records_did ON records (did);
CREATE INDEX IF NOT EXISTS records_cites ON records (json_extract(value, '$.eprintUri'))
    WHERE collection = 'pub.chive.eprint.citation';
"""
_FULL_TEXT = (
    "CREATE VIRTUAL TABLE IF NOT EXISTS eprint_text USING fts5 (uri UNINDEXED, title, abstract)"
)
SCHEMA = _TABLES.format(text_table=_FULL_TEXT) + _LOOKUPS
# An audit's replay compares what the fold writes, not what SQLite derives from it: its copy
# has no lookup indexes, and keeps the full-text rows (uri, title, abstract) in a plain table
# (same columns, no type affinity, so values stay as written; same rowids) instead of FTS5
# tokenizing every title and abstract. That spares it over a third of its writes.
AUDIT_SCHEMA = _TABLES.format(
    text_table="CREATE TABLE IF NOT EXISTS eprint_text (uri, title, abstract)"
)

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
_REPO_UPSERT = (
    "INSERT INTO repos (did, pds, rev, commit_cid, synced_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (did) DO UPDATE SET pds = excluded.pds, rev = excluded.rev, "
    "commit_cid = excluded.commit_cid, synced_at = excluded.synced_at"
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


def statements(event: model.AnyEvent) -> list[tuple[str, list[tuple]]]:
    """The statements that fold one event, in order: (SQL, its rows)."""
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
            decoded = json_or_none(value)
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
    if isinstance(event, model.RepoSynced):
        return [
            (_REPO_UPSERT, [(event.did, event.pds, event.rev, event.commit, event.occurred_at)])
        ]
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


def json_or_none(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None


# Every event's statements come in this order. Statements of events on different uris touch
# different rows, so within a stretch of the batch where no uri repeats they may be regrouped
# by kind along this order without changing the result.
_ORDER = {
    sql: rank
    for rank, sql in enumerate(
        (
            _UPSERT,
            _DELETE,
            _KEYS_DELETE,
            _KEYS_INSERT,
            _TEXT_DELETE,
            _TEXT_INSERT,
            _CITATIONS_DELETE,
            _CITATION_INSERT,
            _CITATION_SET_DELETE,
            _CITATION_SET_UPSERT,
            _REPO_UPSERT,
        )
    )
}


def runs(events: list[model.AnyEvent]) -> list[tuple[str, list[tuple]]]:
    """The statements of a batch as runs of one kind: one executemany per run instead of one
    round trip per statement. The batch is cut wherever a uri comes again (its events keep
    the log's order); within each stretch the statements are grouped by kind."""
    out: list[tuple[str, list[tuple]]] = []
    stretch: dict[str, list[tuple]] = {}
    seen: set[str] = set()

    def close() -> None:
        for sql in sorted(stretch, key=_ORDER.__getitem__):
            if out and out[-1][0] is sql:
                out[-1][1].extend(stretch[sql])
            else:
                out.append((sql, stretch[sql]))
        stretch.clear()
        seen.clear()

    for event in events:
        uri = getattr(event, "uri", None)
        if uri is None or uri in seen:
            close()
        if uri is not None:
            seen.add(uri)
        for sql, rows in statements(event):
            if rows:
                stretch.setdefault(sql, []).extend(rows)
    close()
    return out
