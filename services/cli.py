"""`chive-backfill`: run the service (all in one, or one part per process), drive it through
its API (trigger, status, history, watch, cancel) and inspect its log and index."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys

import msgspec
import uvloop

from events import model
from events.log import read_to_end
from projections import index_location
from services import bootstrap, logs
from services.atproto.service_auth import MAX_TOKEN_LIFETIME_S
from services.observability import Observability
from services.settings import SettingsError, load
from services.supervisor import die_with_supervisor, supervise

METHODS = (
    "pub.chive.admin.triggerBackfill",
    "pub.chive.admin.getBackfillStatus",
    "pub.chive.admin.getBackfillHistory",
    "pub.chive.admin.cancelBackfill",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chive-backfill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "up",
        help="the whole service: the API, the projector and the workers (three processes, one "
        "log, one data dir)",
    )
    sub.add_parser("api", help="the XRPC API (with its operations projection)")
    sub.add_parser("work", help="the record projection and all six workers in one process")
    sub.add_parser(
        "workers",
        help="the workers of every type but fullReindex, reading the index a projector process "
        "keeps in the same data dir (what `up` runs beside the API and the projector)",
    )
    worker = sub.add_parser("worker", help="the worker service of one backfill type")
    worker.add_argument("type", choices=model.BACKFILL_TYPES)
    sub.add_parser("projector", help="the record index projection")
    sub.add_parser(
        "init", help="create the log's topics (partition count, infinite retention) and exit"
    )
    events = sub.add_parser("events", help="events as JSON lines, in log order (audit view)")
    events.add_argument("--operation", help="only this operation's events")
    events.add_argument("--records", action="store_true", help="the records topic instead")
    records = sub.add_parser("records", help="the record index")
    records.add_argument(
        "action",
        choices=["stats", "search", "citations"],
        help="stats: live records per collection; search TEXT: eprints whose title or abstract "
        "match (full text); citations URI: an eprint's citations, user-provided first",
    )
    records.add_argument("argument", nargs="?", help="TEXT for search, URI for citations")
    records.add_argument("--limit", type=int, default=20, help="search: most results shown")
    replay = sub.add_parser("replay", help="fold the whole log afresh and compare (audit)")
    replay.add_argument(
        "--verify",
        action="store_true",
        required=True,
        help="compare with the live projections; exit 1 on any difference",
    )
    replay.add_argument(
        "--projection",
        choices=["operations", "records"],
        action="append",
        help="only this projection (repeatable; default both). In a deployment each lives "
        "with its process: operations with the API, records with the projector",
    )
    dead = sub.add_parser("dlq", help="the dead-letter topic")
    dead.add_argument("action", choices=["list", "replay"])
    trigger = sub.add_parser("trigger", help="start a backfill through the API")
    trigger.add_argument("type", choices=model.BACKFILL_TYPES)
    trigger.add_argument("--did", help="didSync: the DID")
    trigger.add_argument("--uri", help="citationExtraction: one eprint's at-uri")
    trigger.add_argument("--pds-url", help="pdsScan: the PDS (default: every known one)")
    trigger.add_argument("--batch-size", type=int, help="fullReindex: events per transaction")
    trigger.add_argument("--watch", action="store_true", help="then watch it to the end")
    status = sub.add_parser("status", help="one operation, or every running one")
    status.add_argument("id", nargs="?")
    history = sub.add_parser("history", help="finished operations, newest first")
    history.add_argument("--type", choices=model.BACKFILL_TYPES)
    history.add_argument("--limit", type=int, default=20)
    watch = sub.add_parser("watch", help="live progress until the operation ends")
    watch.add_argument("id", nargs="?", help="default: the operation that started last")
    cancel = sub.add_parser("cancel", help="cancel an operation")
    cancel.add_argument("id")
    for client_command in (trigger, status, history, watch, cancel):
        client_command.add_argument(
            "--url", help="the API (default: http://CHIVE_HOST:CHIVE_PORT of this machine)"
        )
        client_command.add_argument(
            "--token",
            help="a service-auth JWT to send (default: one minted per call by the local admin "
            "key, which is the admin of the embedded default)",
        )
        client_command.add_argument("--json", action="store_true", help="print JSON")
    token = sub.add_parser("token", help="mint a service-auth JWT signed by the local admin key")
    token.add_argument(
        "--lxm",
        default=METHODS[0],
        choices=METHODS,
        help=f"the one method the token is good for (default: {METHODS[0]})",
    )
    token.add_argument(
        "--ttl",
        type=_ttl,
        default=60,
        help=f"seconds the token is valid (default 60, as the reference PDS mints; "
        f"at most {MAX_TOKEN_LIFETIME_S})",
    )
    return parser


def _ttl(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {raw!r}") from None
    if not 1 <= value <= MAX_TOKEN_LIFETIME_S:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_TOKEN_LIFETIME_S} seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load()
    except SettingsError as exc:
        print(f"chive-backfill: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    die_with_supervisor()
    if args.command == "token":
        return _token(settings, args)
    # What is loaded by now (modules, classes, the libraries' tables) lives as long as the
    # process: out of the collector's sight, a full collection no longer walks it each time a
    # scan's records have made enough garbage (10-15% of a 20k-record scan under `up`, A/B).
    gc.freeze()
    if args.command == "replay":
        # A batch job allocating millions of short-lived events: fewer, larger young
        # collections (6-8% of a 1M-event replay here; no one waits on its pauses).
        gc.set_threshold(100_000, 50, 100)
    try:
        # uvloop (libuv, in C): every process here is a loop of many small wake-ups (requests,
        # SQLite hops, Kafka fetches), each cheaper on libuv than on asyncio's Python loop.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_async_main(settings, args))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # every fatal error ends the process the same way
        _die(exc)


def _die(exc: BaseException) -> None:
    """A fatal error: one line on stderr and a non-zero exit, now. `os._exit`, because a
    thread left behind (an SQLite connection's, a Kafka client's) must not keep a dead
    service alive for a supervisor to wait on forever."""
    logging.getLogger("chive_backfill").debug("fatal error", exc_info=exc)
    if isinstance(exc, SystemExit) and isinstance(exc.code, str):
        reason = exc.code
    elif isinstance(exc, SystemExit):
        reason = f"exited with status {exc.code}"
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    print(f"chive-backfill: {' '.join(reason.split())}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1)


async def _async_main(settings, args) -> int:
    if args.command in CLIENT_COMMANDS:
        return await _client_command(settings, args)
    if args.command == "events":
        return await _events(settings, args)
    if args.command == "records":
        return await _records(settings, args)
    if args.command == "replay":
        return await _replay(settings, tuple(args.projection or ("operations", "records")))
    if args.command == "init":
        async with bootstrap.open_log(settings):
            print(f"topics ready with {settings.partitions} partitions", file=sys.stderr)
        return 0
    if args.command == "dlq":
        return await _dlq(settings, args.action)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.command == "up":
        await supervise(stop)
        return 0
    obs = Observability()
    async with bootstrap.open_log(settings, obs.metrics) as event_log:
        if args.command == "api":
            await bootstrap.run_api(settings, event_log, stop, obs=obs)
            return 0
        if args.command == "worker":
            part = bootstrap.run_workers(settings, event_log, [args.type], stop, obs=obs)
        elif args.command == "work":
            part = bootstrap.run_work(settings, event_log, stop, obs=obs)
        elif args.command == "workers":
            part = bootstrap.run_beside_projector(settings, event_log, stop, obs=obs)
        else:
            part = bootstrap.run_projector(settings, event_log, stop, obs=obs)
        if settings.status_port is None:
            await part
        else:
            await bootstrap.run_beside_status(settings, obs, stop, part)
    return 0


def _token(settings, args) -> int:
    # A service-auth token names one method (lxm); a token without one is refused.
    print(bootstrap.local_minter(settings)(args.lxm, args.ttl))
    issuer = bootstrap.local_admin_key(settings).public.did_key()
    print(f"issuer {issuer}, lxm {args.lxm}, valid {args.ttl}s", file=sys.stderr)
    return 0


CLIENT_COMMANDS = ("trigger", "status", "history", "watch", "cancel")


async def _client_command(settings, args) -> int:
    """Exit 0 on success; 1 when the API refuses or the watched operation did not complete."""
    from services.admin_client import AdminCallFailed, AdminClient, describe, printer

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = args.url or f"http://{host}:{settings.port}"
    token = args.token
    signer = (lambda _method: token) if token else bootstrap.local_minter(settings)

    def emit(result) -> None:
        if args.json:
            print(json.dumps(result, indent=2))
        elif isinstance(result, list):
            print("\n".join(describe(op) for op in result) or "none")
        elif isinstance(result, dict):
            print(describe(result))

    show = (
        (lambda op: print(json.dumps(op), flush=True))
        if args.json
        else printer(sys.stdout.isatty())
    )
    async with AdminClient(url, signer) as client:
        try:
            if args.command == "trigger":
                params = {
                    "type": args.type,
                    "did": args.did,
                    "uri": args.uri,
                    "pdsUrl": args.pds_url,
                    "batchSize": args.batch_size,
                }
                op = await client.trigger(**{k: v for k, v in params.items() if v is not None})
                if not args.watch:
                    emit(op)
                    return 0
                op = await client.watch(op["id"], show)
            elif args.command == "status":
                emit(await client.status(args.id) if args.id else await client.running())
                return 0
            elif args.command == "history":
                emit(await client.history(max(1, min(100, args.limit)), args.type))
                return 0
            elif args.command == "cancel":
                cancelled = await client.cancel(args.id)
                if args.json:
                    emit({"id": args.id, "cancelled": cancelled})
                else:
                    print("cancel requested" if cancelled else "already finished")
                return 0 if cancelled else 1
            else:
                op_id = args.id
                if op_id is None:
                    running = await client.running()
                    if not running:
                        print("chive-backfill: no running operation", file=sys.stderr)
                        return 1
                    op_id = max(running, key=lambda o: o["startedAt"])["id"]
                op = await client.watch(op_id, show)
        except AdminCallFailed as exc:
            print(f"chive-backfill: {exc}", file=sys.stderr)
            return 1
    return 0 if op["status"] == "completed" else 1


async def _events(settings, args) -> int:
    topic = model.RECORDS_TOPIC if args.records else model.OPERATIONS_TOPIC
    async with bootstrap.open_log(settings) as event_log:
        messages = await read_to_end(event_log, topic)
    # Order is total within a partition; across partitions, by append time.
    messages.sort(key=lambda m: (m.timestamp_ms, m.partition, m.offset))
    out = sys.stdout
    for m in messages:
        if args.operation and m.key != args.operation:
            try:
                if model.decode(m.value).operation_id != args.operation:
                    continue
            except model.DecodeError:
                continue
        try:
            # Decoded (so upcast to the current schema), then back to plain JSON.
            event = msgspec.json.decode(model.encode(model.decode(m.value)))
        except model.DecodeError as exc:
            event = {"undecodable": str(exc)}
        line = {"partition": m.partition, "offset": m.offset, "headers": m.headers, "event": event}
        out.write(json.dumps(line, default=str) + "\n")
    return 0


async def _records(settings, args) -> int:
    from projections.index_reader import FollowingIndex

    if args.action != "stats" and not args.argument:
        print(f"records {args.action} needs an argument", file=sys.stderr)
        return 2
    if not index_location.active_path(settings.data_dir).exists():
        print(f"no record index in {settings.data_dir}", file=sys.stderr)
        return 1
    index = FollowingIndex(settings.data_dir)
    await index.open()
    try:
        if args.action == "stats":
            result = await index.stats()
        elif args.action == "search":
            result = await index.search(args.argument, max(1, args.limit))
        else:
            result = await index.citations(args.argument)
        print(json.dumps(result, indent=2, sort_keys=True))
    finally:
        await index.close()
    return 0


async def _replay(settings, projections: tuple[str, ...]) -> int:
    from services.audit import verify

    async with bootstrap.open_log(settings) as event_log:
        try:
            report = await verify(event_log, settings.data_dir, projections)
        except FileNotFoundError as exc:
            print(f"chive-backfill: {exc}", file=sys.stderr)
            return 2
    for line in report["differences"]:
        print(line)
    print(
        json.dumps(
            {**{n: report[n] for n in projections}, "differences": len(report["differences"])}
        )
    )
    return 1 if report["differences"] else 0


async def _dlq(settings, action: str) -> int:
    from events import dlq

    async with bootstrap.open_log(settings) as event_log:
        letters = await dlq.read_all(event_log)
        if action == "replay":
            print(json.dumps({"replayed": await dlq.replay(event_log, letters)}))
            return 0
    for d in letters:
        print(
            json.dumps(
                {
                    "topic": d.topic,
                    "partition": d.partition,
                    "offset": d.offset,
                    "key": d.key,
                    "reason": d.reason,
                    "consumer": d.consumer,
                    "dead_at": model.format_datetime(d.dead_at),
                    "event_type": d.headers.get("event_type"),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
