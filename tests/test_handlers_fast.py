"""Handlers on the in-memory log against loopback fakes: a whole didSync, its record events
and its failure modes, without a service process or a broker."""

from __future__ import annotations

import msgspec
import pytest

from events import model
from events.log import read_to_end
from events.memory_log import MemoryEventLog
from services import outbound
from services.atproto.identity import DidResolver
from services.settings import Settings
from services.workers import did_sync
from services.workers.context import Limits, OperationFailed, Services, WorkContext
from services.workers.xrpc_client import RetryPolicy, XrpcClient

pytestmark = pytest.mark.unit

LOOPBACK = outbound.Policy(allow_private=True)


async def run_did_sync(log, plc, did: str, checkpoint=None):
    progress: list[model.BackfillProgressed] = []

    async def append(event):
        progress.append(event)

    async with outbound.Fetcher(LOOPBACK) as fetcher:
        services = Services(
            log,
            XrpcClient(fetcher, RetryPolicy(attempts=1, timeout_s=5)),
            DidResolver(fetcher, plc.url, 5.0),
            # A progress event per page, so each page's checkpoint can be looked at.
            limits=msgspec.structs.replace(Limits.of(Settings()), progress_records=1),
        )
        ctx = WorkContext(
            operation_id="op-1",
            backfill_type="didSync",
            params={"did": did},
            checkpoint=checkpoint,
            services=services,
            append_operation_event=append,
        )
        outcome = await did_sync.run(ctx)
    return outcome, progress


@pytest.fixture
async def log():
    log = MemoryEventLog(partitions=2)
    await log.start()
    yield log
    await log.close()


async def test_did_sync_indexes_every_chive_record_of_the_repo(log, plc, fresh_pds, unique):
    did = f"did:plc:fast{unique}"
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 150, "app.bsky.feed.post": 3})
    plc.register(did, pds_url=fresh_pds.url)
    outcome, progress = await run_did_sync(log, plc, did)
    records = await read_to_end(log, model.RECORDS_TOPIC)
    assert outcome.records_processed == 150 == len(records)
    assert outcome.sources == [fresh_pds.url]
    assert {m.key for m in records} == {
        u for u in fresh_pds.chive_uris() if u.startswith(f"at://{did}/")
    }
    # Two listRecords pages: the checkpoint after the first is where a resumed run starts.
    assert progress and progress[-1].checkpoint["count"] == 150


async def test_did_sync_resumes_from_its_checkpoint(log, plc, fresh_pds, unique):
    did = f"did:plc:resume{unique}"
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 150})
    plc.register(did, pds_url=fresh_pds.url)
    _, progress = await run_did_sync(log, plc, did)
    first_page = next(p.checkpoint for p in progress if p.checkpoint["count"] == 100)
    resumed_log = MemoryEventLog(partitions=2)
    await resumed_log.start()
    outcome, _ = await run_did_sync(resumed_log, plc, did, checkpoint=first_page)
    assert outcome.records_processed == 150
    assert len(await read_to_end(resumed_log, model.RECORDS_TOPIC)) == 50


async def test_did_sync_names_what_is_missing(log, plc, fresh_pds, unique):
    with pytest.raises(OperationFailed, match="not found"):
        await run_did_sync(log, plc, f"did:plc:nobody{unique}")
    did = f"did:plc:nopds{unique}"
    plc.register(did)
    with pytest.raises(OperationFailed, match="no #atproto_pds service"):
        await run_did_sync(log, plc, did)
