"""Projections over a real SQLite log and real SQLite read models: positions committed with the
state, idempotent under redelivery, resumed from the stored position after a restart."""

from __future__ import annotations

import asyncio
import random

import msgspec
import pytest

from events import model
from events.log import Entry
from events.sqlite_log import SqliteEventLog
from projections import citations, record_fold
from projections.operations import OperationsStore
from projections.records import RecordIndex
from projections.runner import ProjectionRunner, decode_batch, positions_after

pytestmark = pytest.mark.unit

SUBMISSION = "pub.chive.eprint.submission"


def _entry(event) -> Entry:
    key = getattr(event, "uri", None) or event.operation_id
    return Entry(key, model.encode(event), model.headers_for(event))


def _upsert(uri: str, cid: str, t: int) -> model.RecordUpserted:
    did, collection, rkey = uri[5:].split("/")
    return model.RecordUpserted(
        event_id=model.new_event_id(),
        operation_id="op",
        occurred_at=t,
        uri=uri,
        did=did,
        collection=collection,
        rkey=rkey,
        cid=cid,
        value=msgspec.Raw(b'{"v":1}'),
    )


def _request(op_id: str, t: int) -> model.BackfillRequested:
    return model.BackfillRequested(
        event_id=model.new_event_id(),
        operation_id=op_id,
        occurred_at=t,
        backfill_type="didSync",
        params={"did": "did:plc:a"},
        requested_by="did:key:zA",
        dedupe_key=f"k{op_id}",
    )


async def _fold(store, messages) -> None:
    good, poison = decode_batch(messages)
    assert not poison
    await store.apply([e for _, e in good], positions_after(messages))


async def _read_all(log, topic):
    reader = log.reader(topic)
    out = []
    while True:
        batch = await reader.poll(0.05)
        if not batch:
            return out
        out.extend(batch)


async def test_operations_store_is_idempotent_and_tracks_positions(tmp_path):
    log = SqliteEventLog(tmp_path / "events.db", 2)
    await log.start()
    await log.ensure_topics([model.OPERATIONS_TOPIC])
    events = [
        _request("a", 1),
        _request("b", 2),
        model.BackfillProgressed(
            event_id="p1",
            operation_id="a",
            occurred_at=3,
            backfill_type="didSync",
            records_processed=9,
        ),
    ]
    await log.append(model.OPERATIONS_TOPIC, [_entry(e) for e in events])
    # The same event appended twice (a producer retry) is applied once.
    await log.append(model.OPERATIONS_TOPIC, [_entry(events[2])])
    messages = await _read_all(log, model.OPERATIONS_TOPIC)
    store = OperationsStore(tmp_path / "ops.db")
    await store.open()
    await _fold(store, messages)
    first = await store.all()
    await _fold(store, messages)  # redelivery
    assert await store.all() == first
    assert {o.id: o.records_processed for o in first} == {"a": 9, "b": 0}
    positions = await store.positions()
    assert sum(positions.values()) == 4
    await store.close()
    await log.close()


async def test_record_index_upserts_deletes_and_tombstones(tmp_path):
    index = RecordIndex(tmp_path / "records.db")
    await index.open()
    uri = "at://did:plc:a/pub.chive.graph.node/k1"
    log = SqliteEventLog(tmp_path / "events.db", 2)
    await log.start()
    await log.ensure_topics([model.RECORDS_TOPIC])
    await log.append(model.RECORDS_TOPIC, [_entry(_upsert(uri, "c1", 10))])
    await _fold(index, await _read_all(log, model.RECORDS_TOPIC))
    first = await index.get(uri)
    assert (first.cid, first.indexed_at, first.deleted, first.value) == ("c1", 10, False, {"v": 1})
    # Same uri and cid again (a resumed worker re-reading a page): nothing changes.
    await log.append(model.RECORDS_TOPIC, [_entry(_upsert(uri, "c1", 20))])
    await _fold(index, (await _read_all(log, model.RECORDS_TOPIC))[1:])
    assert await index.get(uri) == first
    delete = model.RecordDeleted(
        event_id="d",
        operation_id="op",
        occurred_at=30,
        uri=uri,
        did="did:plc:a",
        collection="pub.chive.graph.node",
        rkey="k1",
    )
    await log.append(model.RECORDS_TOPIC, [_entry(delete), _entry(_upsert(uri, "c1", 40))])
    batch = (await _read_all(log, model.RECORDS_TOPIC))[2:]
    await _fold(index, batch[:1])
    assert (await index.get(uri)).deleted is True
    assert (await index.stats())["deleted"] == 1
    await _fold(index, batch[1:])
    back = await index.get(uri)
    assert (back.deleted, back.indexed_at) == (False, 40)
    assert await index.stats() == {
        "collections": {"pub.chive.graph.node": 1},
        "live": 1,
        "deleted": 0,
    }
    await index.close()
    await log.close()


async def test_runner_resumes_from_the_stored_position(tmp_path):
    log = SqliteEventLog(tmp_path / "events.db", 3)
    await log.start()
    await log.ensure_topics([model.OPERATIONS_TOPIC])
    store = OperationsStore(tmp_path / "ops.db")
    await store.open()

    async def run_until(count: int) -> None:
        stop = asyncio.Event()
        runner = ProjectionRunner(log, store, "ops")
        task = asyncio.create_task(runner.run(stop))
        positions = await log.append(
            model.OPERATIONS_TOPIC, [_entry(_request(f"op{count}-{i}", i)) for i in range(5)]
        )
        for position in positions:
            assert await runner.wait_past(position, 10)
        stop.set()
        await asyncio.wait_for(task, 10)

    await run_until(1)
    applied_before = len(await store.all())
    await store.close()
    # A restart: a new store on the same file starts where the old one stopped.
    store = OperationsStore(tmp_path / "ops.db")
    await store.open()
    await run_until(2)
    assert len(await store.all()) == applied_before + 5 == 10
    async with store.conn.execute("SELECT COUNT(*) FROM applied_events") as cur:
        assert (await cur.fetchone())[0] == 10
    await store.close()
    await log.close()


async def test_a_log_holding_v1_and_v2_events_replays_into_the_right_state(tmp_path):
    """An old log (v1 BackfillCompleted, written before records_skipped existed) and new
    events side by side, through the real log and store."""
    log = SqliteEventLog(tmp_path / "events.db", 2)
    await log.start()
    await log.ensure_topics([model.OPERATIONS_TOPIC])
    v1_completed = (
        b'{"event_type":"BackfillCompleted","event_id":"v1done","operation_id":"old",'
        b'"occurred_at":2000,"schema_version":1,"backfill_type":"didSync",'
        b'"records_processed":12,"total_records":null,"sources":[]}'
    )
    v1_headers = {
        "event_type": "BackfillCompleted",
        "backfill_type": "didSync",
        "event_id": "v1done",
        "schema_version": "1",
    }
    new_done = model.new_event(
        model.BackfillCompleted,
        "new",
        backfill_type="didSync",
        records_processed=7,
        records_skipped=3,
    )
    await log.append(
        model.OPERATIONS_TOPIC,
        [
            _entry(_request("old", 1000)),
            Entry("old", v1_completed, v1_headers),
            _entry(_request("new", 3000)),
            _entry(new_done),
        ],
    )
    store = OperationsStore(tmp_path / "ops.db")
    await store.open()
    await _fold(store, await _read_all(log, model.OPERATIONS_TOPIC))
    got = {o.id: (o.status, o.records_processed, o.records_skipped) for o in await store.all()}
    assert got == {"old": ("completed", 12, 0), "new": ("completed", 7, 3)}
    await store.close()
    await log.close()


def _event(cls, t: int, **fields):
    return cls(event_id=model.new_event_id(), operation_id="op", occurred_at=t, **fields)


async def test_eprints_searchable_citations_replaced_and_dropped_with_their_eprint(tmp_path):
    index = RecordIndex(tmp_path / "records.db")
    await index.open()
    try:
        await _eprint_lifecycle(index)
    finally:
        await index.close()


async def _eprint_lifecycle(index: RecordIndex) -> None:
    did, sub = "did:plc:a", "pub.chive.eprint.submission"
    eprint, cited = f"at://{did}/{sub}/e1", f"at://{did}/{sub}/e2"

    def submission(uri: str, title: str, t: int) -> model.RecordUpserted:
        value = {"title": title, "abstractPlainText": "On mosses and lichens.", "doi": None}
        return _event(
            model.RecordUpserted,
            t,
            uri=uri,
            did=did,
            collection=sub,
            rkey=uri.rsplit("/", 1)[1],
            cid=f"c{t}",
            value=msgspec.Raw(msgspec.json.encode(value)),
        )

    def citations(t: int, *titles: str) -> model.CitationsExtracted:
        return _event(
            model.CitationsExtracted,
            t,
            uri=eprint,
            did=did,
            document_cid="blob",
            method="pdf-text",
            citations=[model.Citation(title=title) for title in titles],
        )

    await index.apply(
        [submission(eprint, "Lichens of the north", 1), submission(cited, "Tidal power", 2)],
        {0: 2},
    )
    assert [r["uri"] for r in await index.search("LICHENS north")] == [eprint]
    assert [r["uri"] for r in await index.search("mosses")] == [cited, eprint]
    # FTS syntax in the input is words, never a query error.
    assert await index.search('"AND( NEAR*') == []
    assert await index.match_eprint("title", "tidal power") is None, "too short to match"

    await index.apply([citations(3, "One", "Two")], {0: 3})
    await index.apply([citations(4, "Three")], {0: 4})
    assert [c["title"] for c in await index.citations(eprint)] == ["Three"]

    # A retitled eprint is found by its new title only.
    await index.apply([submission(eprint, "Granite weathering", 5)], {0: 5})
    assert [r["uri"] for r in await index.search("north")] == []
    assert [r["uri"] for r in await index.search("granite")] == [eprint]

    gone = _event(model.RecordDeleted, 6, uri=eprint, did=did, collection=sub, rkey="e1")
    await index.apply([gone], {0: 6})
    assert await index.search("granite") == []
    assert await index.citations(eprint) == []


async def test_a_colocated_duplicate_request_names_the_running_operation(tmp_path):
    """The log decides between identical requests: the first while it runs is the operation,
    later ones are other names of it; once it finished, the next is a new operation."""

    def request(op_id: str, t: int, colocated: bool = True) -> model.BackfillRequested:
        return msgspec.structs.replace(_request(op_id, t), dedupe_key="same", colocated=colocated)

    def done(op_id: str, t: int) -> model.BackfillCompleted:
        return model.BackfillCompleted(
            event_id=model.new_event_id(),
            operation_id=op_id,
            occurred_at=t,
            backfill_type="didSync",
            records_processed=1,
        )

    events = [
        request("a", 1),
        request("b", 2),  # duplicate of a
        request("legacy", 3, colocated=False),  # from before co-location: never merged
        done("a", 4),
        request("c", 5),  # a finished: a new operation
        request("d", 6),  # duplicate of c
    ]
    stores = []
    for run in ("live", "replay"):
        store = OperationsStore(tmp_path / f"{run}.db")
        await store.open()
        stores.append(store)
        # The live store folds one event per batch, the replay all in one: same answer.
        batches = [[e] for e in events] if run == "live" else [events]
        for batch in batches:
            await store.apply(batch, {})
        await store.apply([], {0: 6})
    for store in stores:
        assert sorted(o.id for o in await store.all()) == ["a", "c", "legacy"]
        assert (await store.get("b")).id == "a"
        assert (await store.get("d")).id == "c"
        assert (await store.get("a")).status == "completed"
        assert await store.aliases() == {"b": "a", "d": "c"}
        # What a trigger asks (from memory): the newest running operation of the key, and
        # the positions folded; the same once the store is opened afresh from its file.
        running, folded = await store.running_as_of("same")
        assert (running.id, folded) == ("c", {0: 6})
        assert (await store.running_as_of("same"))[0].id == "c"
        assert await store.running_as_of("other") == (None, {0: 6})
        await store.close()
        reopened = OperationsStore(store.path)
        await reopened.open()
        running, folded = await reopened.running_as_of("same")
        assert (running.id, running.status, folded) == ("c", "running", {0: 6})
        await reopened.apply([done("c", 7), done("legacy", 8)], {0: 8})
        assert await reopened.running_as_of("same") == (None, {0: 8})
        await reopened.close()


def test_a_batch_folds_in_runs_of_one_statement_in_log_order():
    a, b = "at://did:plc:a/pub.chive.review.comment/1", "at://did:plc:a/pub.chive.review.comment/2"
    deleted = model.new_event(
        model.RecordDeleted, "op", uri=a, did="did:plc:a", collection="x", rkey="1"
    )
    runs = record_fold.runs(
        [_upsert(a, "c1", 1), _upsert(b, "c2", 2), deleted, _upsert(a, "c3", 3)]
    )
    # Two upserts share one executemany; the delete and the re-upsert keep their places.
    assert [len(rows) for _, rows in runs] == [2, 1, 1]
    assert [rows[0][0] for _, rows in runs] == [a, a, a]
    assert runs[0][0] == runs[2][0] != runs[1][0]


def test_a_user_citation_wins_over_the_extracted_one_it_gives():
    user = [
        (
            "at://did:plc:u/pub.chive.eprint.citation/1",
            '{"citedWork": {"title": "A user citation", "doi": "10.1234/ABC"}}',
        )
    ]
    extracted = [
        ("Same work by DOI", "https://doi.org/10.1234/abc", None, 2020, "[]", "raw 1", None, None),
        ("Another work entirely", None, "2101.00001", None, '["Ada"]', "raw 2", None, None),
    ]
    merged = citations.merge(user, extracted)
    assert [c["source"] for c in merged] == ["user", "extracted"]
    assert merged[1] == {
        "source": "extracted",
        "title": "Another work entirely",
        "arxivId": "2101.00001",
        "authors": ["Ada"],
        "raw": "raw 2",
    }


def at(t: int, cls, **fields):
    """An event of time `t` (its id too, so folds see the same event every run)."""
    return cls(event_id=f"e{t}", operation_id="op", occurred_at=t, **fields)


async def test_a_batch_folds_to_the_same_index_as_its_events_one_by_one(tmp_path):
    """Regrouping a batch's statements by kind changes nothing: random upserts, deletes,
    citation sets and repo revisions over a few uris, folded as one batch and one by one."""
    rng = random.Random(7)
    uris = [f"at://did:plc:r{i % 3}/{SUBMISSION}/{i}" for i in range(6)]
    events: list[model.AnyEvent] = []
    for t in range(400):
        uri = rng.choice(uris)
        did, collection, rkey = uri[5:].split("/")
        kind = rng.random()
        if kind < 0.5:
            title = f"A title long enough to be a key {rng.randrange(4)}"
            value = msgspec.json.encode(
                {"title": title, "abstract": "x", "doi": f"10.1234/{t % 5}"}
            )
            events.append(
                at(
                    t,
                    model.RecordUpserted,
                    uri=uri,
                    did=did,
                    collection=collection,
                    rkey=rkey,
                    cid=f"c{rng.randrange(3)}",
                    value=msgspec.Raw(value),
                )
            )
        elif kind < 0.7:
            events.append(
                at(
                    t,
                    model.RecordDeleted,
                    uri=uri,
                    did=did,
                    collection=collection,
                    rkey=rkey,
                )
            )
        elif kind < 0.9:
            events.append(
                at(
                    t,
                    model.CitationsExtracted,
                    uri=uri,
                    did=did,
                    document_cid="d",
                    method="pdf-text",
                    citations=[model.Citation(title=f"cited {t}", year=2000 + t % 20)],
                )
            )
        else:
            events.append(
                at(
                    t,
                    model.RepoSynced,
                    uri=f"at://{did}",
                    did=did,
                    pds="https://pds.example",
                    rev=f"3k{t:011d}",
                    commit="b",
                )
            )
    batched, single = RecordIndex(tmp_path / "a.db"), RecordIndex(tmp_path / "b.db")
    await batched.open()
    await single.open()
    try:
        await batched.apply(events, {0: len(events)})
        for i, event in enumerate(events):
            await single.apply([event], {0: i + 1})
        assert await batched.snapshot() == await single.snapshot()
        statements = sum(1 for e in events for _, rows in record_fold.statements(e) if rows)
        assert len(record_fold.runs(events)) < statements  # it did regroup
    finally:
        await batched.close()
        await single.close()


async def test_queries_that_meet_a_moved_pointer_together_leave_one_connection(tmp_path):
    """fullReindex switches the pointer while a reader answers several queries at once: one
    of them moves the reader to the new file; none opens a connection that is never closed."""
    from projections import index_location
    from projections.index_reader import FollowingIndex

    data = tmp_path / "data"
    for rkey, name in enumerate(("records.db", "records-rebuilt.db")):
        index = RecordIndex(data / name)
        await index.open()
        await index.apply([_upsert(f"at://did:plc:a/{SUBMISSION}/{rkey}", "c", 1)], {0: 1})
        await index.close()
    reader = FollowingIndex(data)
    await reader.open()
    opened = []
    real_open = reader.open

    async def counting_open() -> None:
        await real_open()
        opened.append(reader.conn)

    reader.open = counting_open
    index_location.switch_to(data, data / "records-rebuilt.db")
    try:
        assert await asyncio.gather(*(reader.live_count() for _ in range(8))) == [1] * 8
        assert reader.path.name == "records-rebuilt.db"
        assert len(opened) == 1 and reader.conn is opened[0]
    finally:
        await reader.close()


def test_a_finished_operation_says_whether_the_index_holds_its_records():
    from projections.operations import fold
    from services.api.views import operation_view

    running = fold(None, _request("op", 1))
    done = fold(
        running,
        model.BackfillCompleted(
            event_id=model.new_event_id(),
            operation_id="op",
            occurred_at=2,
            backfill_type="didSync",
            records_processed=8,
            records_through={0: 5, 1: 3},
        ),
    )
    assert done.records_through == {0: 5, 1: 3}
    assert operation_view(done, index_folded={0: 5, 1: 2})["indexCurrent"] is False
    assert operation_view(done, index_folded={0: 5})["indexCurrent"] is False
    assert operation_view(done, index_folded={0: 5, 1: 3})["indexCurrent"] is True
    assert operation_view(done, index_folded={0: 9, 1: 4, 2: 1})["indexCurrent"] is True
    # Nothing to say without the index, while running, or for an operation finished before
    # completions recorded where the records topic ended.
    assert "indexCurrent" not in operation_view(done)
    assert "indexCurrent" not in operation_view(running, index_folded={0: 9, 1: 9})
    older = msgspec.structs.replace(done, records_through=None)
    assert "indexCurrent" not in operation_view(older, index_folded={0: 9, 1: 9})


async def test_two_indexes_are_compared_table_by_table_inside_sqlite(tmp_path):
    """What an audit reports: every row key whose rows differ, in any table, either way. The
    replayed copy is an audit's scratch copy: its full-text rows sit in a plain table (no
    inverted index to build) and compare equal to the live index's FTS5 rows."""
    import sqlite3

    def submission(rkey: str, title: str) -> model.RecordUpserted:
        event = _upsert(f"at://did:plc:a/{SUBMISSION}/{rkey}", f"c{rkey}", 1)
        value = msgspec.json.encode({"title": title})
        return msgspec.structs.replace(event, value=msgspec.Raw(value))

    events = [submission("1", "On lichens of granite"), submission("2", "On mosses of bogs")]
    live = RecordIndex(tmp_path / "live.db")
    replayed = RecordIndex(tmp_path / "replayed.db", scratch=True)
    for index in (live, replayed):
        await index.open()
        await index.apply(events, {0: 2})
    try:
        kinds = []
        for path in (live.path, replayed.path):
            with sqlite3.connect(path) as db:
                (sql,) = db.execute(
                    "SELECT sql FROM sqlite_master WHERE name = 'eprint_text'"
                ).fetchone()
                kinds.append("fts5" in sql)
        assert kinds == [True, False]
        assert await live.differences(replayed.path) == []
        with sqlite3.connect(live.path) as db:
            db.execute("UPDATE eprint_text SET title = 'On ferns' WHERE uri LIKE '%/1'")
            db.execute("DELETE FROM eprint_keys WHERE kind = 'title' AND uri LIKE '%/2'")
        await replayed.apply([_upsert("at://did:plc:b/x/3", "c3", 2)], {0: 3})
        lines = await live.differences(replayed.path)
        assert len(lines) == 3, lines
        by_table = {line.split()[1]: line for line in lines}
        text, key, record = by_table["text"], by_table["key"], by_table["record"]
        assert text.startswith(f"records text at://did:plc:a/{SUBMISSION}/1: live (")
        assert "On ferns" in text and "On lichens of granite" in text
        assert key.startswith("records key title ")
        assert f"{SUBMISSION}/2: live None != replayed ('title', " in key
        assert record.startswith("records record at://did:plc:b/x/3: live None != replayed (")
        assert await live.count() == 2 and await replayed.count() == 3
    finally:
        await live.close()
        await replayed.close()


def test_a_process_that_leaves_a_projection_open_still_exits(tmp_path):
    """A connection left open (a bug, a part cancelled while starting) must not hold the
    interpreter at exit: the process ends when its work does."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import asyncio, pathlib, sys\n"
        "from projections.operations import OperationsStore\n"
        "kept = []  # still referenced at exit, so never collected (and closed) before it\n"
        "async def main():\n"
        "    store = OperationsStore(pathlib.Path(sys.argv[1]))\n"
        "    await store.open()\n"
        "    kept.append(store)\n"
        "    await store.all()\n"
        "    print('opened', flush=True)\n"
        "asyncio.run(main())\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "ops.db")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout == "opened\n", done.stderr


async def test_workers_beside_a_projector_process_read_its_index_once_it_has_caught_up(tmp_path):
    """Under `up` the workers read the index the projector process folds: a read waits until
    the index's positions (committed with its writes) reach the log's end as it was when
    asked, and waits for the file itself while the projector has not created it yet."""
    from projections.index_location import active_path
    from projections.index_reader import ProjectorsIndex

    data = tmp_path / "data"
    log = SqliteEventLog(tmp_path / "events.db", 3)
    await log.start()
    await log.ensure_topics([model.RECORDS_TOPIC])
    projectors = ProjectorsIndex(data, log)
    uris = [f"at://did:plc:a/{SUBMISSION}/{i}" for i in range(6)]
    await log.append(model.RECORDS_TOPIC, [_entry(_upsert(u, "c", 1)) for u in uris])
    # No index file yet: not caught up, and nothing created by the reader.
    assert await projectors.caught_up(0.1) is None
    assert not active_path(data).exists()
    index = RecordIndex(active_path(data))  # the projector's, as its process opens it
    await index.open()
    stop = asyncio.Event()
    runner = ProjectionRunner(log, index, "records")
    try:
        # The projector starts while a worker waits: the wait ends with every record folded.
        waiting = asyncio.create_task(projectors.caught_up(30))
        folding = asyncio.create_task(runner.run(stop))
        seen = await waiting
        assert seen is not None and await seen.live_count() == 6
        # Stopped, it falls behind what is appended next: a read gives up at its deadline.
        stop.set()
        await asyncio.wait_for(folding, 10)
        await log.append(model.RECORDS_TOPIC, [_entry(_upsert(f"{uris[0]}x", "c", 2))])
        assert await projectors.caught_up(0.2) is None
    finally:
        stop.set()
        await projectors.close()
        await index.close()
        await log.close()
