"""Kafka mode as deployed: API, projector and every worker type as separate processes, two
replicas per type, started once for this module; one test per behaviour. Killing the replica
that runs an operation hands it to the other, which resumes from the checkpoint to the exact
count."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from events import model
from events.kafka_log import KafkaEventLog
from projections import index_location
from projections.index_reader import FollowingIndex
from services.bootstrap import BESIDE_PROJECTOR
from testkit.broker import free_port
from testkit.harness import Admin, Client, ServiceProcess, service_env, starts, wait_index
from testkit.servers import FakePds
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
        # The processes log JSON lines (their output is a file, not a terminal).
        messages = [
            json.loads(line).get("message", "")
            for line in path.read_text().splitlines()
            if line.startswith("{")
        ]
        lines = [m for m in messages if ": assigned partitions [" in m]
        if not lines:
            return False
        latest[name] = set(json.loads(lines[-1].rsplit("assigned partitions ", 1)[1]))
    for t in {name.rsplit("-", 1)[0] for name in logs}:
        one, two = latest[f"{t}-1"], latest[f"{t}-2"]
        if one & two or one | two != {0, 1, 2}:
            return False
    return True


@dataclass
class Deployment:
    processes: dict[str, ServiceProcess]
    url: str
    admin: Admin
    pds: FakePds
    data: Path
    bootstrap: str
    namespace: str
    tmp: Path

    def worker_logs(self) -> dict[str, Path]:
        return {
            n: self.tmp / f"{n}.log" for n, p in self.processes.items() if p.args[0] == "worker"
        }


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap, tmp_path_factory, plc) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("deployment")
    namespace = uuid.uuid4().hex[:10]
    admin = Admin()
    port = free_port()
    env = service_env(
        tmp / "data", port, plc.url, admin, kafka=kafka_bootstrap, namespace=namespace
    )
    pds = FakePds(plc).start()

    # Topics exist before anyone consumes: created by the first process's startup too, but
    # creating them here keeps the replicas from racing the API on first start.
    async def topics() -> None:
        log = KafkaEventLog(kafka_bootstrap, 3, namespace=namespace)
        await log.start()
        await log.ensure_topics([model.OPERATIONS_TOPIC, model.RECORDS_TOPIC])
        await log.close()

    asyncio.run(topics())
    processes: dict[str, ServiceProcess] = {}
    for name, args in [("api", ("api",)), ("projector", ("projector",))] + [
        (f"{t}-{r}", ("worker", t))
        for t in model.BACKFILL_TYPES
        if t not in BESIDE_PROJECTOR
        for r in (1, 2)
    ]:
        # A worker process keeps its own state (freshnessScan's index replica) in a data dir
        # of its own; the API and the projector share tmp/data.
        # (INFO: the tests read a worker's partition assignments from its log.)
        own = (
            {"CHIVE_DATA_DIR": str(tmp / name), "CHIVE_LOG_LEVEL": "INFO"}
            if args[0] == "worker"
            else {}
        )
        processes[name] = ServiceProcess({**env, **own}, tmp / f"{name}.log", args)
        processes[name].start()
    deployment = Deployment(
        processes,
        f"http://127.0.0.1:{port}",
        admin,
        pds,
        tmp / "data",
        kafka_bootstrap,
        namespace,
        tmp,
    )
    try:
        yield deployment
    finally:
        pds.stop()
        # All stopped before any exit code is judged: none is left running past the test.
        codes = {n: p.terminate() for n, p in processes.items() if p.proc.poll() is None}
        for name, code in codes.items():
            assert code == 0, (tmp / f"{name}.log").read_text()[-2000:]


@pytest.fixture
async def client(deployment) -> Client:
    client = Client(deployment.url, deployment.admin)
    try:
        await eventually(lambda: client.up(), timeout=30, what="API up")
        await eventually(
            lambda: groups_split(deployment.worker_logs()),
            timeout=60,
            what="both replicas of every worker type sharing its partitions",
        )
        yield client
    finally:
        await client.close()


async def live_uris(data: Path) -> list[str]:
    index = FollowingIndex(data)
    await index.open()
    try:
        return [u for u, _ in await index.uris()]
    finally:
        await index.close()


async def synced_repo(deployment: Deployment, client: Client, plc, did: str, n: int) -> list[str]:
    """A repo of `n` records of its own on the deployment's PDS, synced by didSync; the live
    uris of the index once they are in it."""
    plc.register(did, pds_url=deployment.pds.url)
    deployment.pds.add_repo(did, {"pub.chive.review.comment": n})
    sync = await client.trigger(type="didSync", did=did)
    assert (await client.wait_finished(sync["id"], timeout=60))["status"] == "completed"

    async def indexed() -> list[str] | None:
        uris = await live_uris(deployment.data)
        return uris if sum(u.startswith(f"at://{did}/") for u in uris) == n else None

    return await eventually(indexed, what=f"{did} in the index")


async def test_both_replicas_of_every_type_share_its_partitions(deployment, client):
    # The client fixture waited for it; the newest assignment of each replica says so.
    assert groups_split(deployment.worker_logs())
    assert len(deployment.worker_logs()) == 2 * (len(model.BACKFILL_TYPES) - len(BESIDE_PROJECTOR))


async def test_a_killed_replicas_operation_resumes_on_the_other_to_the_exact_count(
    deployment, client, unique
):
    pds = deployment.pds
    pds.faults.delay_s = 0.01
    dids = [f"did:plc:k{i}{unique}" for i in range(6)]
    for did in dids:
        pds.add_repo(did, {"pub.chive.graph.node": 400})
    expected = sum(pds.chive_count(did) for did in pds.repos)
    scan = await client.trigger(type="pdsScan", pdsUrl=pds.url)
    await client.wait_processed(scan["id"], 800)
    # Hold the PDS slow so the kill always lands on work in progress.
    pds.faults.delay_s = 1.0
    (first,) = await started_by(deployment.bootstrap, deployment.namespace, scan["id"])
    assert (await client.status(scan["id"]))["status"] == "running"
    pid = int(first.rsplit(":", 1)[1])
    processes = deployment.processes
    victim = next(n for n, p in processes.items() if p.proc.pid == pid)
    assert victim.startswith("pdsScan-")
    processes[victim].kill()
    pds.faults.delay_s = 0.0
    try:
        done = await client.wait_finished(scan["id"], timeout=90)
        assert done["status"] == "completed", done
        assert done["recordsProcessed"] == expected
        workers = await started_by(deployment.bootstrap, deployment.namespace, scan["id"])
        assert len(workers) == 2 and workers[1] != first, workers
    finally:
        processes[victim].start()  # the deployment keeps two replicas for the next tests


async def test_each_type_runs_in_its_own_processes_side_by_side(deployment, client, plc, unique):
    did = f"did:plc:kd{unique}"
    plc.register(did, pds_url=deployment.pds.url)
    deployment.pds.add_repo(did, {"pub.chive.review.comment": 50})
    sync = await client.trigger(type="didSync", did=did)
    other = await client.trigger(type="governanceSync")
    sync_done = await client.wait_finished(sync["id"], timeout=60)
    other_done = await client.wait_finished(other["id"], timeout=60)
    assert sync_done["status"] == "completed" and sync_done["recordsProcessed"] == 50
    assert other_done["status"] == "failed" and "CHIVE_GOVERNANCE_DID" in other_done["error"]


async def test_a_worker_process_reads_its_own_replica_of_the_index(deployment, client, plc, unique):
    did = f"did:plc:kr{unique}"
    uris = await synced_repo(deployment, client, plc, did, 30)
    # freshnessScan in its own process checks every record of the index once, and
    # citationExtraction finds the one eprint this test adds (no document).
    fresh = await client.trigger(type="freshnessScan")
    fresh_done = await client.wait_finished(fresh["id"], timeout=90)
    assert fresh_done["status"] == "completed", fresh_done
    assert fresh_done["recordsProcessed"] == fresh_done["totalRecords"] >= len(uris)
    deployment.pds.put_record(did, "pub.chive.eprint.submission", "3k1", {"title": "T"})
    sync = await client.trigger(type="didSync", did=did)
    assert (await client.wait_finished(sync["id"], timeout=60))["status"] == "completed"
    citations = await client.trigger(type="citationExtraction")
    citations_done = await client.wait_finished(citations["id"], timeout=60)
    assert citations_done["status"] == "completed", citations_done
    assert citations_done["skipReasons"] == {"no document": 1}, citations_done


async def test_full_reindex_runs_in_the_projector_process_and_switches_its_index(
    deployment, client, plc, unique
):
    before = await synced_repo(deployment, client, plc, f"did:plc:kf{unique}", 20)
    reindex = await client.trigger(type="fullReindex", batchSize=500)
    reindex_done = await client.wait_finished(reindex["id"], timeout=90)
    assert reindex_done["status"] == "completed", reindex_done
    data = deployment.data
    assert index_location.active_path(data).name == f"records-{reindex['id']}.db"
    await wait_index(data, before)
