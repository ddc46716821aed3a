"""The console script: the minted token works against a running service; events and records
stats read what the service wrote."""

from __future__ import annotations

import json

import httpx

from testkit.broker import free_port
from testkit.harness import ServiceProcess, run_cli, service_env
from testkit.waiting import eventually


async def test_token_events_and_stats(tmp_path, plc, fresh_pds, unique):
    did = f"did:plc:cli{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.eprint.submission": 3, "pub.chive.graph.node": 2})
    port = free_port()
    # No CHIVE_ADMIN_DIDS: the admin is the local key that `chive-backfill token` signs with.
    env = service_env(tmp_path / "data", port, plc.url)
    service = ServiceProcess(env, tmp_path / "service.log")
    service.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/xrpc/_health")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, timeout=30, what="API up")
            code, token, err = await run_cli(
                service.env, "token", "--lxm", "pub.chive.admin.triggerBackfill"
            )
            assert code == 0 and "did:key:" in err
            response = await http.post(
                "/xrpc/pub.chive.admin.triggerBackfill",
                json={"type": "didSync", "did": did},
                headers={"authorization": f"Bearer {token.strip()}"},
            )
            assert response.status_code == 200, response.text
            op_id = response.json()["operation"]["id"]
            # A token for one method is refused by another (lxm).
            refused = await http.get(
                "/xrpc/pub.chive.admin.getBackfillStatus",
                headers={"authorization": f"Bearer {token.strip()}"},
            )
            assert refused.status_code == 401
            _, status_token, _ = await run_cli(
                service.env, "token", "--lxm", "pub.chive.admin.getBackfillStatus"
            )

            async def completed() -> bool:
                r = await http.get(
                    "/xrpc/pub.chive.admin.getBackfillStatus",
                    params={"id": op_id},
                    headers={"authorization": f"Bearer {status_token.strip()}"},
                )
                return r.json()["operation"]["status"] == "completed"

            await eventually(completed, what="didSync completed")

            async def stats_done():
                code, out, _ = await run_cli(service.env, "records", "stats")
                stats = json.loads(out) if code == 0 else {}
                return stats if stats.get("live") == 5 else None

            stats = await eventually(stats_done, what="record index stats")
            assert stats["collections"] == {
                "pub.chive.eprint.submission": 3,
                "pub.chive.graph.node": 2,
            }
    finally:
        assert service.terminate() == 0
    code, out, _ = await run_cli(service.env, "events", "--operation", op_id)
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and lines
    assert {line["event"]["operation_id"] for line in lines} == {op_id}
    assert lines[0]["event"]["event_type"] == "BackfillRequested"
    assert lines[-1]["event"]["event_type"] == "BackfillCompleted"
    assert lines[-1]["headers"]["backfill_type"] == "didSync"
    code, out, _ = await run_cli(service.env, "events", "--records")
    kinds = [json.loads(line)["event"]["event_type"] for line in out.splitlines()]
    # The five records, then the repo's revision (read whole with getRepo).
    assert code == 0 and sorted(kinds) == ["RecordUpserted"] * 5 + ["RepoSynced"]
    code, _, err = await run_cli({**service.env, "CHIVE_EVENT_LOG": "redis"}, "events")
    assert code == 2 and "sqlite or kafka" in err
