"""The broker goes away while the service works (a cut proxy in front of a live broker, so the
broker keeps its data): triggers answer 503 quickly and leave no trace, status reads keep
answering, and once the broker is back the running operation completes exactly, without
manual steps. Tansu is used here whatever KAFKA_BOOTSTRAP_SERVERS says: the test needs a broker
it can put a proxy in front of."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import msgspec
import pytest

from projections import index_location
from projections.records import RecordIndex
from services import bootstrap
from services.audit import verify
from tests.broker import Tansu, free_port
from tests.conftest import eventually
from tests.harness import Admin, running_service, settings_for, wait_index
from tests.proxy import CuttableProxy


@pytest.fixture
def behind_proxy(tmp_path, plc, unique):
    """(settings, admin, proxy): a service's settings for a broker reached through a proxy the
    test can cut."""
    broker_port = free_port()
    proxy = CuttableProxy(broker_port)
    broker = Tansu(port=broker_port, advertised_port=proxy.port)
    admin = Admin()
    settings = msgspec.structs.replace(
        settings_for(
            tmp_path / "data", admin, plc.url, kafka=f"127.0.0.1:{proxy.port}", namespace=unique
        ),
        kafka_request_timeout_ms=2000,
    )
    try:
        yield settings, admin, proxy
    finally:
        broker.stop()
        proxy.stop()


async def silent_for(client, op_id: str, seconds: float) -> None:
    """Wait until the operation has had no event for `seconds` (its worker is cut off)."""

    async def silent() -> bool:
        updated = datetime.fromisoformat((await client.status(op_id))["updatedAt"])
        return (datetime.now(UTC) - updated).total_seconds() > seconds

    await eventually(silent, timeout=30, what=f"the operation silent for {seconds} s")


async def test_broker_outage_mid_run(behind_proxy, plc, fresh_pds, unique):
    settings, admin, proxy = behind_proxy
    did = f"did:plc:outage{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 3000})
    fresh_pds.faults.delay_s = 0.01
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="didSync", did=did)
        await client.wait_processed(op["id"], 300)
        proxy.cut()
        t0 = time.monotonic()
        response = await client.post(
            "pub.chive.admin.triggerBackfill", {"type": "pdsScan", "pdsUrl": fresh_pds.url}
        )
        elapsed = time.monotonic() - t0
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "NotEnoughResources"
        assert elapsed < 8, f"trigger took {elapsed:.1f}s while the broker was down"
        # Reads are served from the projection meanwhile.
        during = await client.status(op["id"])
        assert during["status"] == "running"
        listing = await client.get("pub.chive.admin.getBackfillStatus")
        assert listing.status_code == 200

        # Keep the broker away until the operation has been silent for longer than a
        # consumer session: members are evicted and must rejoin, not just reconnect.
        await silent_for(client, op["id"], 3)
        stalled_at = (await client.status(op["id"]))["recordsProcessed"]
        assert stalled_at < 3000
        proxy.restore()

        done = await client.wait_finished(op["id"], timeout=120)
        assert done["status"] == "completed" and done["recordsProcessed"] == 3000
        after = await client.trigger(type="governanceSync")
        await client.wait_finished(after["id"])
        ops = (await client.get("pub.chive.admin.getBackfillStatus")).json()["operations"]
        # The trigger refused during the outage left no operation behind.
        assert sorted(o["type"] for o in ops) == ["didSync", "governanceSync"]
        await wait_index(settings.data_dir, fresh_pds.chive_uris())
    async with bootstrap.open_log(settings) as log:
        report = await verify(log, settings.data_dir)
    assert report["differences"] == [] and report["records"] == 3000


async def test_broker_outage_mid_rebuild(behind_proxy, plc, fresh_pds, unique):
    settings, admin, proxy = behind_proxy
    did = f"did:plc:rebuild{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 4000})
    async with running_service(settings, admin) as client:
        sync = await client.trigger(type="didSync", did=did)
        assert (await client.wait_finished(sync["id"], timeout=60))["status"] == "completed"
        await wait_index(settings.data_dir, fresh_pds.chive_uris())
        live = RecordIndex.reader_in(settings.data_dir)
        await live.open()
        before = await live.snapshot()
        op = await client.trigger(type="fullReindex", batchSize=1)
        await client.wait_processed(op["id"], 500)
        proxy.cut()

        await silent_for(client, op["id"], 3)
        assert (await client.status(op["id"]))["status"] == "running"
        # The old index serves throughout.
        assert (await live.stats())["live"] == 4000
        proxy.restore()

        done = await client.wait_finished(op["id"], timeout=120)
        assert done["status"] == "completed", done
        assert done["recordsProcessed"] == done["totalRecords"] == 4000
        assert index_location.active_path(settings.data_dir).name == f"records-{op['id']}.db"
        assert await live.snapshot() == before
        await live.close()
    async with bootstrap.open_log(settings) as log:
        report = await verify(log, settings.data_dir)
    assert report["differences"] == [] and report["records"] == 4000
