"""Composition root: builds and wires every part of a process from Settings. Nothing runs at
import time; each `run_*` runs until `stop` is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

from events import dlq, model
from events.kafka_log import KafkaEventLog
from events.log import EventLog
from events.sqlite_log import SqliteEventLog
from projections import index_location
from projections.index_reader import (
    FoldedHere,
    FollowingIndex,
    IndexAccess,
    IndexPositions,
    ProjectorsIndex,
)
from projections.operations import OperationsStore
from projections.rebuild import Reindexer
from projections.records import RecordIndex
from projections.runner import ProjectionRunner
from services import outbound, status
from services.api import admin_page, http_server
from services.api.app import Api, create_app
from services.api.auth import ServiceAuth
from services.api.lexicon import Lexicons
from services.atproto import keys
from services.atproto.identity import DidResolver
from services.metrics import CountedLog, Metrics
from services.observability import Observability
from services.rate_limit import RateLimiter
from services.settings import Settings
from services.workers import (
    citation_extraction,
    did_sync,
    freshness_scan,
    full_reindex,
    governance_sync,
    pds_scan,
)
from services.workers.context import Limits, Services
from services.workers.grobid import Grobid
from services.workers.pdf_text import PdfTextPool
from services.workers.runner import Handler, WorkerService, group_name
from services.workers.xrpc_client import RetryPolicy, XrpcClient

log = logging.getLogger(__name__)

HANDLERS: dict[str, Handler] = {
    "didSync": did_sync.run,
    "pdsScan": pds_scan.run,
    "freshnessScan": freshness_scan.run,
    "citationExtraction": citation_extraction.run,
    "fullReindex": full_reindex.run,
    "governanceSync": governance_sync.run,
}
assert set(HANDLERS) == set(model.BACKFILL_TYPES)


def make_log(settings: Settings) -> EventLog:
    if settings.event_log == "kafka":
        return KafkaEventLog(
            settings.kafka_bootstrap_servers,
            settings.partitions,
            replication_factor=settings.kafka_replication,
            enable_idempotence=settings.kafka_idempotence,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_ms,
            namespace=settings.kafka_namespace,
            request_timeout_ms=settings.kafka_request_timeout_ms,
        )
    return SqliteEventLog(settings.data_dir / "events.db", settings.partitions)


@contextlib.asynccontextmanager
async def open_log(settings: Settings, metrics: Metrics | None = None) -> AsyncIterator[EventLog]:
    """The configured log, started, its topics created; appends counted into `metrics`."""
    event_log: EventLog = make_log(settings)
    if metrics is not None:
        event_log = CountedLog(event_log, metrics)
    await event_log.start()
    try:
        await event_log.ensure_topics([model.OPERATIONS_TOPIC, model.RECORDS_TOPIC, dlq.DLQ_TOPIC])
        yield event_log
    finally:
        await event_log.close()


def local_admin_key(settings: Settings) -> keys.PrivateKey:
    return keys.load_or_create(settings.data_dir / "admin-key.pem")


def fetch_policy(settings: Settings) -> outbound.Policy:
    """What outbound fetches may reach: public https, plus the URLs the operator configured."""
    return outbound.Policy.for_urls(
        settings.allow_private_networks,
        [settings.plc_url, settings.governance_pds_url, settings.grobid_url],
    )


def local_minter(settings: Settings) -> Callable[..., str]:
    """`mint(lxm, ttl_s=60)`: a service-auth token of the local admin key for this service
    (what `chive-backfill token`, the CLI's API calls and the admin page send)."""
    key = local_admin_key(settings)
    issuer = key.public.did_key()

    def mint(lxm: str, ttl_s: int = 60) -> str:
        return keys.mint_service_jwt(
            key, iss=issuer, aud=settings.service_did, lxm=lxm, ttl_s=ttl_s
        )

    return mint


def admin_dids(settings: Settings) -> frozenset[str]:
    """CHIVE_ADMIN_DIDS, or when unset the local admin key that `chive-backfill token` uses."""
    if settings.admin_dids:
        return frozenset(settings.admin_dids)
    return frozenset({local_admin_key(settings).public.did_key()})


async def run_api(
    settings: Settings,
    event_log: EventLog,
    stop: asyncio.Event,
    on_ready: Callable[[int], Awaitable[None]] | None = None,
    obs: Observability | None = None,
) -> None:
    obs = obs or Observability()
    store = OperationsStore(settings.data_dir / "api-operations.db")
    await store.open()
    projection = ProjectionRunner(event_log, store, "operations")
    obs.watch_projection(projection, "operations", model.OPERATIONS_TOPIC)
    obs.watch_log(event_log)
    operations = obs.metrics.observe_operations(settings.stall_after_s * 1000)

    async def operations_snapshot() -> None:
        operations.update(await store.all(), model.now_ms())

    obs.refresh.append(operations_snapshot)
    async with outbound.Fetcher(fetch_policy(settings)) as fetcher:
        auth = ServiceAuth(
            DidResolver(fetcher, settings.plc_url, settings.source_timeout_s),
            settings.service_did,
            admin_dids(settings),
        )
        # A write fails by the producer's own request timeout (the record is then dropped,
        # never sent late); the API's bound is a safety net just above it.
        append_timeout_s = settings.kafka_request_timeout_ms / 1000 + 2
        index_folded = IndexPositions(settings.data_dir)
        api = Api(
            event_log, store, projection, settings.stall_after_s, append_timeout_s, index_folded
        )
        app = create_app(api, Lexicons.load(), auth, RateLimiter(settings.rate_limit_per_minute))
        status.add_routes(app, obs.health, obs.metrics, obs.refresh)
        # The page gets local tokens only where the local key is the admin.
        page_minter = None if settings.admin_dids else local_minter(settings)
        admin_page.add_routes(app, api, auth, page_minter)
        sock = http_server.listen(settings.host, settings.port)
        server = http_server.server(app, settings.max_connections)
        tasks = [
            asyncio.create_task(projection.run(stop)),
            asyncio.create_task(server.serve(sockets=[sock])),
        ]

        async def stopper() -> None:
            await stop.wait()
            server.should_exit = True

        tasks.append(asyncio.create_task(stopper()))
        try:
            while not server.started:
                if tasks[1].done():
                    await tasks[1]
                    raise RuntimeError(f"API could not listen on {settings.host}:{settings.port}")
                await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            log.info("API listening on http://%s:%s", settings.host, port)
            if on_ready is not None:
                await on_ready(port)
            await _until_first_done(tasks, stop)
        finally:
            server.should_exit = True
            try:
                # uvicorn stops taking requests and lets those in flight finish: only then do
                # the stores close (closed under a request, they answered it with a 500).
                await asyncio.wait([tasks[1]], timeout=DRAIN_S)
            finally:
                # Closed even when this part is cancelled while it drains (run_all cancels
                # its parts as soon as it stops): a connection left open outlives the loop.
                await _cancel(tasks)
                await index_folded.close()
                await store.close()


# Worker types that read the record index; their process keeps its own replica of it.
READS_INDEX = {"freshnessScan", "citationExtraction", "governanceSync"}
# Worker types that run beside the projector and work on its index.
BESIDE_PROJECTOR = {"fullReindex"}


async def run_workers(
    settings: Settings,
    event_log: EventLog,
    types: list[str],
    stop: asyncio.Event,
    projector: Projector | None = None,
    obs: Observability | None = None,
    *,
    projector_process: bool = False,
) -> None:
    """`projector`: the records projection when it runs in this process. `projector_process`:
    a projector process keeps the index in this data dir (`up`): the workers read that one."""
    obs = obs or Observability()
    if BESIDE_PROJECTOR & set(types) and projector is None:
        raise SystemExit(
            f"{', '.join(sorted(BESIDE_PROJECTOR & set(types)))} works on the projector's index: "
            "it runs inside `chive-backfill projector` (or `up`), not as a worker of its own"
        )
    async with contextlib.AsyncExitStack() as stack:
        fetcher = await stack.enter_async_context(outbound.Fetcher(fetch_policy(settings)))
        tasks: list[asyncio.Task] = []
        index: IndexAccess | None = None
        reads_index = bool(READS_INDEX & set(types))
        if reads_index and projector_process:
            projectors = ProjectorsIndex(settings.data_dir, event_log)
            stack.push_async_callback(projectors.close)
            index = projectors
        elif reads_index and projector is not None:
            # Over a connection of its own, following fullReindex's switches.
            following = FollowingIndex(settings.data_dir)
            await following.open()
            stack.push_async_callback(following.close)
            index = FoldedHere(following, projector.runner)
        elif reads_index:
            # A worker process on its own keeps a replica of the index, folded here.
            replica = RecordIndex(settings.data_dir / "worker-records.db")
            await replica.open()
            stack.push_async_callback(replica.close)
            runner = ProjectionRunner(event_log, replica, "worker-records")
            obs.watch_projection(runner, "worker-records", model.RECORDS_TOPIC)
            tasks.append(asyncio.create_task(runner.run(stop), name="worker-records"))
            index = FoldedHere(replica, runner)
        policy = RetryPolicy(attempts=settings.source_attempts, timeout_s=settings.source_timeout_s)
        pdf = None
        if "citationExtraction" in types and not settings.grobid_url:
            pdf = PdfTextPool()
            stack.push_async_callback(pdf.close)
        services = Services(
            event_log,
            XrpcClient(fetcher, policy, observe=obs.metrics.source_request),
            # Workers ask afresh only where their own work calls for it (a didSync, a repo
            # gone from its PDS), never on a caller's say-so: no spacing between fresh asks.
            DidResolver(fetcher, settings.plc_url, settings.source_timeout_s, fresh_interval_s=0),
            governance_pds_url=settings.governance_pds_url,
            governance_did=settings.governance_did,
            index=index,
            reindexer=projector.reindexer if projector else None,
            grobid=Grobid(fetcher, settings.grobid_url, policy) if settings.grobid_url else None,
            pdf=pdf,
            limits=Limits.of(settings),
        )
        workers = [WorkerService(t, HANDLERS[t], services) for t in types]
        for worker in workers:
            obs.health.add(worker.readiness)
            obs.groups.append(group_name(worker.backfill_type))
        obs.watch_log(event_log)
        tasks += [
            asyncio.create_task(w.run(stop), name=f"worker-{w.backfill_type}") for w in workers
        ]
        try:
            await _until_first_done(tasks, stop)
        finally:
            await _cancel(tasks)


class Projector(NamedTuple):
    """The records projection of a process: its index, the runner folding into it and the
    rebuild that can replace it."""

    index: RecordIndex
    runner: ProjectionRunner
    reindexer: Reindexer


def records_projection(settings: Settings, event_log: EventLog) -> Projector:
    index = RecordIndex(index_location.active_path(settings.data_dir))
    runner = ProjectionRunner(event_log, index, "records")
    return Projector(index, runner, Reindexer(event_log, runner, index, settings.data_dir))


async def run_projector(
    settings: Settings,
    event_log: EventLog,
    stop: asyncio.Event,
    projector: Projector | None = None,
    obs: Observability | None = None,
) -> None:
    """`projector`: a records projection whose index the caller has opened (and will close).
    Without one, this process owns the index, and runs the workers that work on it."""
    obs = obs or Observability()
    if projector is not None:
        obs.watch_projection(projector.runner, "records", model.RECORDS_TOPIC)
        obs.watch_log(event_log)
        await projector.runner.run(stop)
        return
    projector = records_projection(settings, event_log)
    obs.watch_projection(projector.runner, "records", model.RECORDS_TOPIC)
    obs.watch_log(event_log)
    index = projector.index
    await index.open()
    tasks = [
        asyncio.create_task(projector.runner.run(stop), name="projector"),
        asyncio.create_task(
            run_workers(settings, event_log, sorted(BESIDE_PROJECTOR), stop, projector, obs),
            name="projector-workers",
        ),
    ]
    try:
        await _until_first_done(tasks, stop)
    finally:
        await _cancel(tasks)
        await index.close()


async def run_work(
    settings: Settings, event_log: EventLog, stop: asyncio.Event, obs: Observability | None = None
) -> None:
    """The record projection and all six workers in one process, sharing one index (one
    process for the whole of the work: `chive-backfill work`, and the tests' run_all)."""
    obs = obs or Observability()
    # One record index in one process: workers that read it share the projector's. It is
    # opened here, first, so no two connections race to create the file.
    projector = records_projection(settings, event_log)
    await projector.index.open()
    tasks = [
        asyncio.create_task(run_projector(settings, event_log, stop, projector, obs)),
        asyncio.create_task(run_workers(settings, event_log, list(HANDLERS), stop, projector, obs)),
    ]
    try:
        await _until_first_done(tasks, stop)
    finally:
        await _cancel(tasks)
        await projector.index.close()


async def run_beside_projector(
    settings: Settings, event_log: EventLog, stop: asyncio.Event, obs: Observability | None = None
) -> None:
    """The workers of every type but those inside the projector, reading the index a projector
    process keeps in this data dir: what runs beside the API and the projector under `up`."""
    types = sorted(set(HANDLERS) - BESIDE_PROJECTOR)
    await run_workers(settings, event_log, types, stop, obs=obs, projector_process=True)


async def run_all(
    settings: Settings,
    stop: asyncio.Event,
    on_ready: Callable[[int], Awaitable[None]] | None = None,
) -> None:
    """Everything in one process on one log and one event loop (tests; `up` runs the API, the
    projector and the workers in three processes)."""
    obs = Observability()
    async with open_log(settings, obs.metrics) as event_log:
        tasks = [
            asyncio.create_task(run_api(settings, event_log, stop, on_ready, obs)),
            asyncio.create_task(run_work(settings, event_log, stop, obs)),
        ]
        try:
            await _until_first_done(tasks, stop)
        finally:
            await _cancel(tasks)


async def serve_status(settings: Settings, obs: Observability, stop: asyncio.Event) -> None:
    """/healthz, /readyz and /metrics of a worker or projector process, on CHIVE_STATUS_PORT."""
    assert settings.status_port is not None
    sock = http_server.listen(settings.host, settings.status_port)
    server = http_server.server(status.status_app(obs.health, obs.metrics, obs.refresh), 100)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await stop.wait()
    finally:
        server.should_exit = True
        await serving


async def run_beside_status(
    settings: Settings, obs: Observability, stop: asyncio.Event, part: Awaitable[None]
) -> None:
    """A worker or projector process with its status endpoints."""
    tasks = [
        asyncio.create_task(part, name="part"),
        asyncio.create_task(serve_status(settings, obs, stop), name="status endpoints"),
    ]
    try:
        await _until_first_done(tasks, stop)
    finally:
        await _cancel(tasks)


async def _until_first_done(tasks: list[asyncio.Task], stop: asyncio.Event) -> None:
    """Return when stop is set; if a part exits first, stop the rest and raise its error."""
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    for task in done:
        if task is not stopper and not stop.is_set():
            stop.set()
            exc = task.exception()
            if exc is not None:
                raise exc
            raise RuntimeError(f"{task.get_name()} exited unexpectedly")


# A part that does not finish within this after its cancellation is left behind: shutting down
# must end, and the CLI exits without waiting on what is left.
CANCEL_GRACE_S = 10.0
# How long a stopping API waits for the requests in flight (below `up`'s grace before a kill).
DRAIN_S = 5.0


async def _cancel(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=CANCEL_GRACE_S)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: the first error is the one raised, not these
    for task in pending:
        log.error(
            "%s did not stop within %.0f s of its cancellation", task.get_name(), CANCEL_GRACE_S
        )
