"""The broker goes away while the service works: cut off behind a proxy (the broker keeps
running), stopped cleanly and restarted, or killed with SIGKILL and restarted on the same log.
Triggers answer 503 quickly and leave no trace, status reads keep answering, and once the broker
is back the running operation completes exactly, without manual steps. These tests run their
own Apache Kafka whatever KAFKA_BOOTSTRAP_SERVERS says: they stop, kill and proxy it."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

import msgspec
import pytest

from projections import index_location
from projections.index_reader import FollowingIndex
from services import bootstrap
from services.audit import verify
from testkit.apache_kafka import ApacheKafka
from testkit.broker import free_port
from testkit.harness import Admin, running_service, settings_for, wait_index
from testkit.proxy import CuttableProxy
from testkit.waiting import eventually


@pytest.fixture
def behind_proxy(tmp_path, plc, unique):
    """(settings, admin, proxy): a service's settings for a broker reached through a proxy the
    test can cut."""
    broker_port = free_port()
    proxy = CuttableProxy(broker_port)
    broker = ApacheKafka(tmp_path / "kafka", port=broker_port, advertised_port=proxy.port)
    broker.start()
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
        broker.kill()
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
        # The idempotent producer may still deliver the refused trigger once the broker is
        # back (its 503 says so), but never twice, and nothing else appears.
        types = sorted(o["type"] for o in ops)
        assert types in (["didSync", "governanceSync"], ["didSync", "governanceSync", "pdsScan"])
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
        live = FollowingIndex(settings.data_dir)
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
        # Events of the records topic folded: the 4,000 records and the repo's RepoSynced.
        assert done["recordsProcessed"] == done["totalRecords"] == 4000 + 1
        assert index_location.active_path(settings.data_dir).name == f"records-{op['id']}.db"
        assert await live.snapshot() == before
        await live.close()
    async with bootstrap.open_log(settings) as log:
        report = await verify(log, settings.data_dir)
    assert report["differences"] == [] and report["records"] == 4000


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
async def test_broker_restart_mid_scan(tmp_path, plc, fresh_pds, unique, how):
    """The broker itself goes down mid-scan (a clean stop, or SIGKILL) and comes back on the
    same log: nothing is lost, nothing counted twice, and the audit replay agrees."""
    broker = ApacheKafka(tmp_path / "kafka").start()
    admin = Admin()
    settings = msgspec.structs.replace(
        settings_for(tmp_path / "data", admin, plc.url, kafka=broker.bootstrap, namespace=unique),
        kafka_request_timeout_ms=2000,
    )
    assert settings.kafka_idempotence, "Apache Kafka runs with the idempotent producer"
    dids = [f"did:plc:restart{unique}{i}" for i in range(4)]
    for did in dids:
        plc.register(did, pds_url=fresh_pds.url)
        fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 800})
    fresh_pds.faults.delay_s = 0.01
    try:
        async with running_service(settings, admin) as client:
            op = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url)
            await client.wait_processed(op["id"], 400)
            if how == signal.SIGTERM:
                broker.stop()
            else:
                broker.kill()
            await silent_for(client, op["id"], 3)
            assert (await client.status(op["id"]))["status"] == "running"
            broker.start()

            done = await client.wait_finished(op["id"], timeout=180)
            assert done["status"] == "completed", done
            assert done["recordsProcessed"] == 3200
            await wait_index(settings.data_dir, fresh_pds.chive_uris(), timeout=60)
        async with bootstrap.open_log(settings) as log:
            report = await verify(log, settings.data_dir)
        assert report["differences"] == [] and report["records"] == 3200
    finally:
        broker.kill()
