"""Kafka mode as deployed: API, projector and every worker type as separate processes, two
replicas per type. Killing the replica that runs an operation hands it to the other, which
resumes from the checkpoint to the exact count."""

from __future__ import annotations

import json
from pathlib import Path

from events import model
from events.kafka_log import KafkaEventLog
from projections import index_location
from services.bootstrap import BESIDE_PROJECTOR
from testkit.broker import free_port
from testkit.harness import Admin, Client, ServiceProcess, service_env, starts, wait_index
from testkit.waiting import eventually


async def started_by(bootstrap: str, namespace: str, op_id: str) -> list[str]:
    """Workers (type@host:pid) that started the operation, in order."""
    return [worker for op, worker in await starts(bootstrap, namespace) if op == op_id]


def groups_split(logs: dict[str, Path]) -> bool:
    """Both replicas of every worker type hold a share of the partitions (their newest
    "assigned partitions" lines are disjoint and cover all three), so no join is still to come
    that would move an operation between replicas on its own."""
    latest: dict[str, set[int]] = {}
    for name, path in logs.items():
        lines = [
            line
            for line in path.read_text().splitlines()
            if "services.workers.runner" in line and ": assigned partitions [" in line
        ]
        if not lines:
            return False
        latest[name] = set(json.loads(lines[-1].rsplit("assigned partitions ", 1)[1]))
    for t in {name.rsplit("-", 1)[0] for name in logs}:
        one, two = latest[f"{t}-1"], latest[f"{t}-2"]
        if one & two or one | two != {0, 1, 2}:
            return False
    return True


async def test_replicas_share_work_and_take_over_on_crash(
    kafka_bootstrap, tmp_path, plc, fresh_pds, unique
):
    admin = Admin()
    port = free_port()
    env = service_env(
        tmp_path / "data", port, plc.url, admin, kafka=kafka_bootstrap, namespace=unique
    )
    fresh_pds.faults.delay_s = 0.01
    for i in range(6):
        fresh_pds.add_repo(f"did:plc:k{i}{unique}", {"pub.chive.graph.node": 400})
    did = f"did:plc:kd{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 50})
    expected = 6 * 400 + 50

    # Topics exist before anyone consumes: created by the first process's startup too, but
    # creating them here keeps the replicas from racing the API on first start.
    log = KafkaEventLog(kafka_bootstrap, 3, namespace=unique)
    await log.start()
    await log.ensure_topics([model.OPERATIONS_TOPIC, model.RECORDS_TOPIC])
    await log.close()

    processes: dict[str, ServiceProcess] = {}
    for name, args in [("api", ("api",)), ("projector", ("projector",))] + [
        (f"{t}-{r}", ("worker", t))
        for t in model.BACKFILL_TYPES
        if t not in BESIDE_PROJECTOR
        for r in (1, 2)
    ]:
        # A worker process keeps its own state (freshnessScan's index replica) in a data dir
        # of its own; the API and the projector share tmp_path/data.
        # (INFO: the test reads a worker's partition assignments from its log.)
        own = (
            {"CHIVE_DATA_DIR": str(tmp_path / name), "CHIVE_LOG_LEVEL": "INFO"}
            if args[0] == "worker"
            else {}
        )
        processes[name] = ServiceProcess({**env, **own}, tmp_path / f"{name}.log", args)
        processes[name].start()
    client = Client(f"http://127.0.0.1:{port}", admin)

    try:
        await eventually(lambda: client.up(), timeout=30, what="API up")
        worker_logs = {
            n: tmp_path / f"{n}.log" for n, p in processes.items() if p.args[0] == "worker"
        }
        await eventually(
            lambda: groups_split(worker_logs),
            timeout=60,
            what="both replicas of every worker type sharing its partitions",
        )
        scan = await client.trigger(type="pdsScan", pdsUrl=fresh_pds.url)
        sync = await client.trigger(type="didSync", did=did)
        other = await client.trigger(type="governanceSync")

        await client.wait_processed(scan["id"], 800)
        # Hold the PDS slow so the kill always lands on work in progress.
        fresh_pds.faults.delay_s = 1.0
        (first,) = await started_by(kafka_bootstrap, unique, scan["id"])
        assert (await client.status(scan["id"]))["status"] == "running"
        pid = int(first.rsplit(":", 1)[1])
        victim = next(n for n, p in processes.items() if p.proc.pid == pid)
        assert victim.startswith("pdsScan-")
        processes[victim].kill()
        fresh_pds.faults.delay_s = 0.01

        scan_done = await client.wait_finished(scan["id"], timeout=90)
        sync_done = await client.wait_finished(sync["id"], timeout=60)
        other_done = await client.wait_finished(other["id"], timeout=60)
        assert scan_done["status"] == "completed", scan_done
        assert scan_done["recordsProcessed"] == expected
        assert sync_done["status"] == "completed" and sync_done["recordsProcessed"] == 50
        assert other_done["status"] == "failed" and "CHIVE_GOVERNANCE_DID" in other_done["error"]
        workers = await started_by(kafka_bootstrap, unique, scan["id"])
        assert len(workers) == 2 and workers[1] != first, workers

        await wait_index(tmp_path / "data", fresh_pds.chive_uris())
        # freshnessScan in its own process reads its replica of the index: every record once.
        fresh = await client.trigger(type="freshnessScan")
        fresh_done = await client.wait_finished(fresh["id"], timeout=90)
        assert fresh_done["status"] == "completed", fresh_done
        assert fresh_done["recordsProcessed"] == fresh_done["totalRecords"] == expected

        # citationExtraction in its own process reads its replica too: one eprint, no document.
        cited = fresh_pds.put_record(did, "pub.chive.eprint.submission", "3k1", {"title": "T"})
        sync = await client.trigger(type="didSync", did=did)
        assert (await client.wait_finished(sync["id"], timeout=60))["status"] == "completed"
        citations = await client.trigger(type="citationExtraction")
        citations_done = await client.wait_finished(citations["id"], timeout=60)
        assert citations_done["status"] == "completed", citations_done
        assert citations_done["skipReasons"] == {"no document": 1}, citations_done

        # fullReindex runs inside the projector process and switches the index it serves.
        reindex = await client.trigger(type="fullReindex", batchSize=500)
        reindex_done = await client.wait_finished(reindex["id"], timeout=90)
        assert reindex_done["status"] == "completed", reindex_done
        data = tmp_path / "data"
        assert index_location.active_path(data).name == f"records-{reindex['id']}.db"
        await wait_index(data, fresh_pds.chive_uris())
        assert cited in fresh_pds.chive_uris()
    finally:
        await client.close()
        for name, process in processes.items():
            if process.proc.poll() is None:
                assert process.terminate() == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
