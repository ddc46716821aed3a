"""/healthz, /readyz and /metrics: on the API (and `up`), and on a worker or projector process's
CHIVE_STATUS_PORT. Operation metrics come from the folded log, so redelivered events and a
restart never count an operation twice."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from events import model
from events.log import Entry, read_to_end
from events.memory_log import MemoryEventLog
from projections.operations import OperationsStore
from projections.runner import ProjectionRunner
from services import bootstrap
from services.health import Health
from services.metrics import Metrics
from services.status import status_app
from testkit.broker import free_port
from testkit.harness import ServiceProcess, running_service, service_env
from testkit.waiting import eventually


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


async def is_ready(http: httpx.AsyncClient) -> bool:
    return (await http.get("/readyz")).status_code == 200


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, tuple], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_operation_metrics_count_each_operation_once(settings, admin, fresh_pds, unique):
    did = f"did:plc:m{unique}"
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 30})
    completed = ("chive_backfill_operations_total", (("status", "completed"), ("type", "didSync")))
    records = ("chive_backfill_records_processed_total", (("type", "didSync"),))
    for restart in range(2):
        async with running_service(settings, admin) as client:
            http = client.http
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            await eventually(lambda c=client: is_ready(c.http), what="ready")
            if restart == 0:
                op = await client.trigger(type="didSync", did=did)
                assert (await client.wait_finished(op["id"]))["status"] == "completed"
                # The log delivers the operation's events again.
                async with bootstrap.open_log(settings) as log:
                    mine = [
                        m
                        for m in await read_to_end(log, model.OPERATIONS_TOPIC)
                        if m.key == op["id"]
                    ]
                    await log.append(
                        model.OPERATIONS_TOPIC, [Entry(m.key, m.value, m.headers) for m in mine]
                    )
                got = await scrape(http)
                appended = (
                    "chive_backfill_events_appended_total",
                    (("topic", model.RECORDS_TOPIC),),
                )
                assert got[appended] >= 30
                hosts = [k for k in got if k[0] == "chive_backfill_source_requests_total"]
                assert any(("outcome", "ok") in labels for _, labels in hosts), hosts
                # The operations projection folded the request, start and completion.
                folded = sum(
                    v
                    for (name, labels), v in got.items()
                    if name == "chive_backfill_projection_position"
                    and ("projection", "operations") in labels
                )
                assert folded >= 3
            got = await scrape(http)
            assert got[completed] == 1 and got[records] == 30, (restart, got)
            count = ("chive_backfill_duration_seconds_count", (("type", "didSync"),))
            hour = (
                "chive_backfill_duration_seconds_bucket",
                (("le", "3600.0"), ("type", "didSync")),
            )
            assert got[count] == 1 and got[hour] == 1


async def test_readiness_names_a_log_that_cannot_be_read(tmp_path):
    log = MemoryEventLog(2)
    await log.start()
    store = OperationsStore(tmp_path / "ops.db")
    await store.open()
    runner = ProjectionRunner(log, store, "operations")
    health = Health()
    health.add(lambda: runner.readiness(30.0))
    app = status_app(health, Metrics(), [])
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://status") as http:

            async def status(code: int):
                response = await http.get("/readyz")
                return response.json() if response.status_code == code else None

            assert (await eventually(lambda: status(200), what="ready"))["status"] == "ready"
            log.unavailable = True
            down = await eventually(lambda: status(503), what="not ready")
            assert down["reasons"] == ["projection operations: log unavailable: unavailable"]
            log.unavailable = False
            await eventually(lambda: status(200), what="ready again")
    finally:
        stop.set()
        await task
        await store.close()
        await log.close()


async def test_a_worker_process_serves_its_status_on_its_own_port(
    tmp_path, plc, kafka_bootstrap, unique
):
    status_port = free_port()
    env = service_env(
        tmp_path / "worker",
        free_port(),
        plc.url,
        kafka=kafka_bootstrap,
        namespace=unique,
        CHIVE_STATUS_PORT=str(status_port),
    )
    worker = ServiceProcess(env, tmp_path / "worker.log", ("worker", "didSync"))
    worker.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{status_port}") as http:

            async def ready() -> bool:
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(ready, timeout=60, what="the worker ready")
            assert (await http.get("/healthz")).status_code == 200
            assert "chive_backfill_events_appended" in (await http.get("/metrics")).text
    finally:
        assert worker.terminate() == 0, (tmp_path / "worker.log").read_text()[-2000:]


@pytest.fixture
def settings(tmp_path, plc, admin):
    from testkit.harness import settings_for

    return settings_for(tmp_path / "data", admin, plc.url)


def total(got: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in got.items()
        if n == name and set(labels.items()) <= set(dict(ls).items())
    )


async def test_lags_and_the_dead_letters_are_measured(settings, admin, fresh_pds, unique):
    did = f"did:plc:lag{unique}"
    fresh_pds.add_repo(did, {"pub.chive.review.comment": 20})
    async with running_service(settings, admin) as client:
        op = await client.trigger(type="didSync", did=did)
        assert (await client.wait_finished(op["id"]))["status"] == "completed"

        async def settled():
            got = await scrape(client.http)
            lags = [
                total(got, "chive_backfill_projection_lag", projection=p)
                for p in ("operations", "records")
            ]
            group = "chive-backfill.worker.didSync"
            consumer = total(got, "chive_backfill_consumer_lag", group=group)
            return got if lags == [0, 0] and consumer == 0 else None

        got = await eventually(settled, what="no lag once the work is done")
        assert got["chive_backfill_dlq_size", ()] == 0
        async with bootstrap.open_log(settings) as log:
            await log.append(
                model.RECORDS_TOPIC,
                [Entry("at://did:plc:x/pub.chive.a.b/c", b"not json", {"event_type": "X"})],
            )

        async def parked():
            got = await scrape(client.http)
            return got["chive_backfill_dlq_size", ()] >= 1

        await eventually(parked, what="the poison event counted in the DLQ")
