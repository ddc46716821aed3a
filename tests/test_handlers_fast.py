"""Handlers on the in-memory log against loopback fakes: a whole didSync, its record events
and its failure modes, without a service process or a broker."""

from __future__ import annotations

import asyncio

import pytest

from events import model
from events.log import read_to_end
from events.memory_log import MemoryEventLog
from projections.index_reader import FoldedHere
from projections.records import RecordIndex
from projections.runner import ProjectionRunner
from services import outbound
from services.atproto import car, keys
from services.workers import did_sync, freshness_scan
from services.workers.context import OperationFailed
from services.workers.repo_sync import UNVERIFIED
from testkit import repo_car
from testkit.handlers import LOOPBACK, services_for, work_context
from testkit.servers import cid_for
from testkit.waiting import eventually

pytestmark = pytest.mark.unit


async def run_did_sync(log, plc, did: str, checkpoint=None):
    return await run_handler(did_sync.run, "didSync", {"did": did}, log, plc, checkpoint)


async def run_handler(handler, kind, params, log, plc, checkpoint=None, **services_extra):
    progress: list[model.BackfillProgressed] = []
    async with outbound.Fetcher(LOOPBACK) as fetcher:
        # A progress event per page, so each page's checkpoint can be looked at.
        services = services_for(
            fetcher, plc.url, log, limits={"progress_records": 1}, **services_extra
        )
        outcome = await handler(work_context(services, kind, params, checkpoint, progress))
    return outcome, progress


@pytest.fixture
async def log():
    log = MemoryEventLog(partitions=2)
    await log.start()
    yield log
    await log.close()


def upserts(messages) -> list[model.RecordUpserted]:
    events = [model.decode(m.value) for m in messages]
    return [e for e in events if isinstance(e, model.RecordUpserted)]


async def test_did_sync_reads_the_repo_whole_and_verified(log, plc, fresh_pds, unique):
    did = f"did:plc:fast{unique}"
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 150, "app.bsky.feed.post": 3})
    outcome, _ = await run_did_sync(log, plc, did)
    events = [model.decode(m.value) for m in await read_to_end(log, model.RECORDS_TOPIC)]
    records = [e for e in events if isinstance(e, model.RecordUpserted)]
    assert outcome.records_processed == 150 == len(records)
    assert outcome.sources == [fresh_pds.url] and outcome.skip_reasons == {}
    # Every CID is the one the PDS computed; the repo's revision is remembered last.
    collection = fresh_pds.repos[did].collections["pub.chive.eprint.submission"]
    assert {(e.rkey, e.cid) for e in records} == {(k, cid_for(v)) for k, v in collection.items()}
    _, rev, head = fresh_pds.repo_car(did)
    (synced,) = [e for e in events if isinstance(e, model.RepoSynced)]
    assert (synced.did, synced.rev, synced.commit, synced.pds) == (did, rev, head, fresh_pds.url)
    assert fresh_pds.calls.get("listRecords", 0) == 0 and fresh_pds.calls["getRepo"] == 1


async def test_a_pds_without_get_repo_is_read_page_by_page_and_resumably(
    log, plc, fresh_pds, unique
):
    did = f"did:plc:paged{unique}"
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 150})
    fresh_pds.faults.no_get_repo = True
    outcome, progress = await run_did_sync(log, plc, did)
    assert outcome.records_processed == 150
    assert outcome.skip_reasons == {UNVERIFIED: 150}
    assert len(upserts(await read_to_end(log, model.RECORDS_TOPIC))) == 150
    # Two listRecords pages: the checkpoint after the first is where a resumed run starts.
    first_page = next(p.checkpoint for p in progress if (p.checkpoint or {}).get("count") == 100)
    resumed_log = MemoryEventLog(partitions=2)
    await resumed_log.start()
    outcome, _ = await run_did_sync(resumed_log, plc, did, checkpoint=first_page)
    assert outcome.records_processed == 150
    assert len(upserts(await read_to_end(resumed_log, model.RECORDS_TOPIC))) == 50


def _flip_last_byte(did: str, data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _drop_a_record_block(did: str, data: bytes) -> bytes:
    roots, blocks = car.read_car(data)
    commit = car.decode(blocks[roots[0]])
    node = car.decode(blocks[commit["data"]])
    record = (node["e"] or [{}])[0].get("v")
    return repo_car.write_car(roots, {c: b for c, b in blocks.items() if c != record})


def _resign(did: str, data: bytes) -> bytes:
    """The same tree under a commit signed by another key."""
    roots, blocks = car.read_car(data)
    commit = car.decode(blocks.pop(roots[0]))
    unsigned = {k: v for k, v in commit.items() if k != "sig"}
    forged = repo_car.signed_commit(blocks, unsigned, keys.PrivateKey.generate())
    return repo_car.write_car([forged], blocks)


@pytest.mark.parametrize(
    "tamper, reason",
    [
        (_flip_last_byte, "repo did not verify: a block does not match its CID"),
        (lambda did, data: data[: len(data) // 2], "repo did not verify: truncated CAR block"),
        (_drop_a_record_block, "repo did not verify: a record is missing from the CAR"),
        (_resign, "repo did not verify: the commit signature does not verify"),
    ],
    ids=["altered-block", "truncated", "record-missing", "forged-signature"],
)
async def test_a_repo_that_does_not_verify_is_not_indexed_at_all(
    log, plc, fresh_pds, unique, tamper, reason
):
    did = f"did:plc:tampered{unique}"
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 40})
    fresh_pds.faults.car_filter = tamper
    outcome, _ = await run_did_sync(log, plc, did)
    assert outcome.records_processed == 0
    (got,) = outcome.skip_reasons
    assert got.startswith(reason), got
    assert await read_to_end(log, model.RECORDS_TOPIC) == []


async def test_a_repo_over_the_size_cap_is_read_page_by_page(
    log, plc, fresh_pds, unique, monkeypatch
):
    did = f"did:plc:huge{unique}"
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 120})
    monkeypatch.setattr(outbound, "REPO_BYTES", 4096)
    outcome, _ = await run_did_sync(log, plc, did)
    assert outcome.records_processed == 120 and outcome.skip_reasons == {UNVERIFIED: 120}
    assert fresh_pds.calls["getRepo"] == 1 and fresh_pds.calls["listRecords"] >= 2


async def test_did_sync_names_what_is_missing(log, plc, fresh_pds, unique):
    with pytest.raises(OperationFailed, match="not found"):
        await run_did_sync(log, plc, f"did:plc:nobody{unique}")
    did = f"did:plc:nopds{unique}"
    plc.register(did)
    with pytest.raises(OperationFailed, match="no #atproto_pds service"):
        await run_did_sync(log, plc, did)


async def test_a_resumed_freshness_scan_starts_at_the_next_unfinished_repo(
    log, plc, fresh_pds, unique, tmp_path
):
    dids = sorted(f"did:plc:r{i}{unique}" for i in range(4))
    for did in dids:
        fresh_pds.add_repo(did, {"pub.chive.review.comment": 5})
        await run_did_sync(log, plc, did)
    index = RecordIndex(tmp_path / "records.db")
    await index.open()
    runner = ProjectionRunner(log, index, "records")
    stop = asyncio.Event()
    folding = asyncio.create_task(runner.run(stop))
    try:
        # Every repo moves on its PDS; the checkpoint says the first two were done already.
        for did in dids:
            fresh_pds.put_record(did, "pub.chive.review.comment", "3knew", {"body": "new"})
        checkpoint = {"stage": "repos", "after_did": dids[1], "checked": 10, "total": 20}
        outcome, _ = await run_handler(
            freshness_scan.run,
            "freshnessScan",
            {},
            log,
            plc,
            checkpoint,
            index=FoldedHere(index, runner),
        )
    finally:
        stop.set()
        await folding
        await index.close()
    assert (outcome.records_processed, outcome.total_records) == (20, 20)
    assert fresh_pds.calls["getRepo"] == 4 + 2  # the four syncs, then the two left
    synced = [
        e.did
        for e in (model.decode(m.value) for m in await read_to_end(log, model.RECORDS_TOPIC))
        if isinstance(e, model.RepoSynced)
    ]
    assert sorted(synced) == sorted([*dids, *dids[2:]])


async def test_pds_scan_reads_several_pdses_side_by_side(log, plc, unique):
    """A slow PDS does not hold the others back: while one has not even listed its repos,
    another is read whole; in the end every PDS is counted once, each in its own progress."""
    from services.workers import pds_scan
    from testkit.servers import FakePds

    slow, quick, third = (FakePds(plc).start() for _ in range(3))
    try:
        for i, pds in enumerate((slow, quick, third)):
            pds.add_repo(f"did:plc:side{i}{unique}", {"pub.chive.graph.node": 30 + i})
        slow.faults.stalls["listRepos"] = [30.0]
        checkpoint = {"pds_urls": [slow.url, quick.url, third.url]}
        scan = asyncio.create_task(
            run_handler(pds_scan.run, "pdsScan", {}, log, plc, checkpoint, timeout_s=60)
        )

        async def others_read() -> bool:
            return quick.calls.get("getRepo", 0) == 1 and third.calls.get("getRepo", 0) == 1

        await eventually(others_read, timeout=10, what="the other PDSes read meanwhile")
        assert slow.calls.get("getRepo", 0) == 0 and not scan.done()
        scan.cancel()
        await asyncio.gather(scan, return_exceptions=True)

        slow.faults.stalls.clear()
        fresh = MemoryEventLog(partitions=2)
        await fresh.start()
        outcome, progress = await run_handler(pds_scan.run, "pdsScan", {}, fresh, plc, checkpoint)
        assert outcome.records_processed == 30 + 31 + 32
        assert outcome.sources == [slow.url, quick.url, third.url]
        # Progress is kept per PDS.
        assert set(progress[-1].checkpoint["pds"]) == set(checkpoint["pds_urls"])
        assert len(upserts(await read_to_end(fresh, model.RECORDS_TOPIC))) == 93
        await fresh.close()
    finally:
        for pds in (slow, quick, third):
            pds.stop()


def test_a_pds_scan_checkpoint_from_before_side_by_side_resumes_where_it_was():
    from services.workers.pds_scan import Checkpoint, PdsProgress, _upcast

    state = Checkpoint(
        pds_urls=["https://a", "https://b", "https://c"],
        pds_index=1,
        page_cursor="page-2",
        done=["did:plc:x"],
        count=70,
    )
    _upcast(state)
    assert state.pds == {
        "https://a": PdsProgress(finished=True),
        "https://b": PdsProgress("page-2", ["did:plc:x"]),
    }
    assert (state.pds_index, state.page_cursor, state.done, state.count) == (0, None, [], 70)
    fresh = Checkpoint(pds_urls=["https://a"])
    _upcast(fresh)
    assert fresh.pds == {}
