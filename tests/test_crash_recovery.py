"""Kill -9 the whole service while didSync and pdsScan run; after restarts both complete with
the exact count and every record indexed once."""

from __future__ import annotations

import json
import random

import pytest

from testkit.broker import free_port
from testkit.harness import Admin, Client, ServiceProcess, run_cli, service_env, wait_index
from testkit.waiting import eventually

KILLS = 3


@pytest.mark.parametrize("log_kind", ["sqlite", "kafka"])
async def test_sigkill_mid_run_resumes_to_exact_counts(
    log_kind, kafka, tmp_path, plc, fresh_pds, unique
):
    rng = random.Random(f"crash-{log_kind}")
    admin = Admin()
    port = free_port()
    env = service_env(tmp_path / "data", port, plc.url, admin, kafka=kafka, namespace=unique)
    fresh_pds.faults.delay_s = 0.01
    for i in range(8):
        fresh_pds.add_repo(
            f"did:plc:scan{i}{unique}",
            {"pub.chive.graph.node": 300, "pub.chive.eprint.submission": 150},
        )
    did = f"did:plc:solo{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 1200})
    scan_total = 8 * 450 + 1200  # the didSync repo is on the same PDS

    service = ServiceProcess(env, tmp_path / "service.log")
    client = Client(f"http://127.0.0.1:{port}", admin)

    try:
        service.start()
        await eventually(lambda: client.up(), timeout=30, what="API up")
        scan = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url)
        sync = await client.trigger(type="didSync", did=did)
        for kill in range(KILLS):
            threshold = rng.randint(100, 600) * (kill + 1)
            victim = scan if kill % 2 == 0 else sync
            limit = scan_total if victim is scan else 1200
            threshold = min(threshold, limit - 200)

            async def reached(victim=victim, threshold=threshold) -> bool:
                op = await client.status(victim["id"])
                return op["recordsProcessed"] >= threshold or op["status"] != "running"

            await eventually(reached, timeout=60, what=f"kill point {kill}")
            service.kill()
            service.start()
            await eventually(lambda: client.up(), timeout=30, what="API up after restart")
        scan_done = await client.wait_finished(scan["id"], timeout=120)
        sync_done = await client.wait_finished(sync["id"], timeout=120)
    finally:
        await client.close()
        if service.proc and service.proc.poll() is None:
            assert service.terminate() == 0, (tmp_path / "service.log").read_text()[-3000:]

    assert scan_done["status"] == "completed", scan_done
    assert sync_done["status"] == "completed", sync_done
    assert scan_done["recordsProcessed"] == scan_total
    assert sync_done["recordsProcessed"] == 1200

    # The projector folded every record exactly once: one live row per at-uri, no extras.
    service.start()
    client = Client(f"http://127.0.0.1:{port}", admin)
    try:
        await eventually(lambda: client.up(), timeout=30, what="API up for the index check")
        await wait_index(tmp_path / "data", fresh_pds.chive_uris())
    finally:
        await client.close()
        assert service.terminate() == 0

    code, stdout, _ = await run_cli(service.env, "events")
    assert code == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    for op in (scan, sync):
        mine = [e["event"] for e in events if e["event"]["operation_id"] == op["id"]]
        kinds = [e["event_type"] for e in mine]
        assert kinds[0] == "BackfillRequested"
        assert kinds.count("BackfillCompleted") == 1
        assert kinds[-1] == "BackfillCompleted"
    code, out, _ = await run_cli(service.env, "replay", "--verify")
    assert code == 0 and json.loads(out.splitlines()[-1])["differences"] == 0, out[-2000:]
    attempts = [
        e["event"]["attempt"] for e in events if e["event"]["event_type"] == "BackfillStarted"
    ]
    assert max(attempts) >= 2, "no operation was ever resumed: the kills missed the work"
