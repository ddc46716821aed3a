"""Two API replicas on one Kafka log, each with its own operations projection: identical
triggers sent to both at once start one operation. The log decides which request came first
(a request's id is picked in its dedupe key's partition), so both replicas, the worker and an
audit replay agree."""

from __future__ import annotations

import asyncio

from events import model
from events.kafka_log import KafkaEventLog
from testkit.broker import free_port
from testkit.harness import Admin, Client, ServiceProcess, service_env, starts
from testkit.waiting import eventually


async def test_identical_triggers_across_two_replicas_start_one_operation(
    kafka_bootstrap, tmp_path, plc, fresh_pds, unique
):
    admin = Admin()
    did = f"did:plc:twoapis{unique}"
    plc.register(did, pds_url=fresh_pds.url)
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 300})
    # Slow enough that the operation still runs while all the triggers arrive.
    fresh_pds.faults.delay_s = 0.2
    log = KafkaEventLog(kafka_bootstrap, 3, namespace=unique)
    await log.start()
    await log.ensure_topics([model.OPERATIONS_TOPIC, model.RECORDS_TOPIC])
    await log.close()

    ports = [free_port(), free_port()]
    processes = [
        ServiceProcess(
            service_env(
                tmp_path / f"api{i}", port, plc.url, admin, kafka=kafka_bootstrap, namespace=unique
            ),
            tmp_path / f"api{i}.log",
            ("api",),
        )
        for i, port in enumerate(ports)
    ]
    worker = ServiceProcess(
        service_env(
            tmp_path / "w", free_port(), plc.url, admin, kafka=kafka_bootstrap, namespace=unique
        ),
        tmp_path / "worker.log",
        ("worker", "didSync"),
    )
    clients = [Client(f"http://127.0.0.1:{port}", admin) for port in ports]
    try:
        for process in [*processes, worker]:
            process.start()
        for client in clients:
            await eventually(client.up, timeout=30, what="API replica up")

        answers = await asyncio.gather(
            *(clients[i % 2].trigger(type="didSync", did=did) for i in range(50))
        )
        ids = {a["id"] for a in answers}
        assert len(ids) == 1, f"{len(ids)} operations for one request: {sorted(ids)}"
        (op_id,) = ids
        for client in clients:

            async def one_listed(client=client) -> bool:
                ops = (await client.get("pub.chive.admin.getBackfillStatus")).json()["operations"]
                return [o["id"] for o in ops] == [op_id]

            await eventually(one_listed, what="each replica to list exactly that operation")
        fresh_pds.faults.delay_s = 0
        for client in clients:
            done = await client.wait_finished(op_id, timeout=60)
            assert done["status"] == "completed" and done["recordsProcessed"] == 300
        # The worker started it once: the duplicates never became work.
        assert [op for op, _ in await starts(kafka_bootstrap, unique)] == [op_id]
    finally:
        for client in clients:
            await client.close()
        for process in [*processes, worker]:
            if process.proc is not None and process.proc.poll() is None:
                process.kill()
