"""governanceSync against a loopback governance PDS, on both logs: valid graph records synced,
invalid ones skipped with reasons, records gone from the PDS deleted from the index; cancel;
SIGKILL and resume to the exact count."""

from __future__ import annotations

import msgspec
import pytest

from projections.records import RecordIndex
from testkit.broker import free_port
from testkit.harness import (
    attempts,
    kill_while_running,
    process_service,
    running_service,
    service_env,
    settings_for,
)
from testkit.waiting import eventually


def node(i: int, **overrides) -> dict:
    value = {
        "$type": "pub.chive.graph.node",
        "id": f"n{i}",
        "kind": "field",
        "label": f"Field {i}",
        "status": "established",
        "createdAt": "2026-01-01T00:00:00.000Z",
    }
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not None}


def edge(i: int, **overrides) -> dict:
    value = {
        "$type": "pub.chive.graph.edge",
        "id": f"e{i}",
        "sourceUri": "at://a/b.c.d/1",
        "targetUri": "at://a/b.c.d/2",
        "relationSlug": "broader",
        "status": "established",
        "createdAt": "2026-01-01T00:00:00.000Z",
    }
    value.update(overrides)
    return {k: v for k, v in value.items() if v is not None}


def governance_repo(pds, did: str, nodes: int, edges: int):
    repo = pds.add_repo(did, {})
    repo.collections["pub.chive.graph.node"] = {f"3k{i:010d}": node(i) for i in range(nodes)}
    repo.collections["pub.chive.graph.edge"] = {f"3k{i:010d}": edge(i) for i in range(edges)}
    return repo


@pytest.fixture
def governance(kafka, tmp_path, plc, fresh_pds, unique, admin):
    did = f"did:plc:governance{unique}"
    settings = msgspec.structs.replace(
        settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique),
        governance_pds_url=fresh_pds.url,
        governance_did=did,
    )
    return settings, did, kafka


async def index_state(settings) -> dict:
    index = RecordIndex(settings.data_dir / "records.db")
    await index.open()
    try:
        rows = await index.rows()
    finally:
        await index.close()
    return {r[0]: bool(r[7]) for r in rows}


async def test_sync_skips_invalid_records_and_deletes_what_is_gone(governance, admin, fresh_pds):
    settings, did, _ = governance
    repo = governance_repo(fresh_pds, did, nodes=30, edges=12)
    nodes = repo.collections["pub.chive.graph.node"]
    nodes["3k9000000001"] = node(901, label=None)
    nodes["3k9000000002"] = node(902, label="")
    repo.collections["pub.chive.graph.edge"]["3k9000000003"] = edge(903, createdAt=None)
    repo.collections["pub.chive.eprint.submission"] = {"3kx": {"title": "not graph"}}
    async with running_service(settings, admin) as client:
        first = await client.wait_finished((await client.trigger(type="governanceSync"))["id"])
        assert first["status"] == "completed", first
        assert (first["recordsProcessed"], first["recordsSkipped"]) == (42, 3)
        assert first["skipReasons"] == {"node missing label": 2, "edge missing createdAt": 1}
        assert "recordsDeleted" not in first

        async def synced():
            state = await index_state(settings)
            return len(state) == 42 and not any(state.values())

        await eventually(synced, what="42 live graph records")
        for rkey in list(nodes)[:5]:
            del nodes[rkey]
        second = await client.wait_finished((await client.trigger(type="governanceSync"))["id"])
        assert second["status"] == "completed", second
        assert (second["recordsProcessed"], second["recordsDeleted"]) == (37, 5)

        async def deleted():
            state = await index_state(settings)
            return sum(state.values()) == 5 and len(state) == 42

        await eventually(deleted, what="5 tombstones")


async def test_without_a_governance_did_it_fails_clearly(
    log_kind, kafka, tmp_path, plc, admin, unique
):
    settings = settings_for(tmp_path / "data", admin, plc.url, kafka=kafka, namespace=unique)
    async with running_service(settings, admin) as client:
        done = await client.wait_finished((await client.trigger(type="governanceSync"))["id"])
    assert done["status"] == "failed" and "CHIVE_GOVERNANCE_DID" in done["error"]


async def test_cancel_stops_the_sync(governance, admin, fresh_pds):
    settings, did, _ = governance
    governance_repo(fresh_pds, did, nodes=3000, edges=0)
    fresh_pds.faults.delay_s = 0.05
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="governanceSync")
        await client.wait_processed(op["id"])
        assert (await client.post("pub.chive.admin.cancelBackfill", {"id": op["id"]})).json() == {
            "success": True
        }
        done = await client.wait_finished(op["id"])
    assert done["status"] == "cancelled" and 0 < done["recordsProcessed"] < 3000


async def test_sigkill_mid_sync_resumes_to_the_exact_count(
    governance, admin, plc, fresh_pds, tmp_path
):
    settings, did, kafka = governance
    governance_repo(fresh_pds, did, nodes=1500, edges=500)
    fresh_pds.faults.delay_s = 0.01
    port = free_port()
    env = service_env(
        settings.data_dir,
        port,
        plc.url,
        admin,
        kafka=kafka,
        namespace=settings.kafka_namespace,
        CHIVE_GOVERNANCE_PDS_URL=fresh_pds.url,
        CHIVE_GOVERNANCE_DID=did,
    )
    async with process_service(env, tmp_path / "service.log", admin) as (service, client):
        op = await client.trigger(type="governanceSync")
        await kill_while_running(service, client, op["id"], (300, 900))
        done = await client.wait_finished(op["id"], timeout=120)
    assert done["status"] == "completed", done
    assert done["recordsProcessed"] == 2000
    assert await attempts(env, op["id"]) >= 2, "the kills missed the running sync"
