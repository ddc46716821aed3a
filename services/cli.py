"""`chive-backfill`: run the service (all in one, or one part per process) and inspect it."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

import msgspec

from events import model
from events.log import read_to_end
from projections import index_location
from services import bootstrap
from services.atproto import keys
from services.atproto.service_auth import MAX_TOKEN_LIFETIME_S
from services.settings import SettingsError, load

METHODS = (
    "pub.chive.admin.triggerBackfill",
    "pub.chive.admin.getBackfillStatus",
    "pub.chive.admin.getBackfillHistory",
    "pub.chive.admin.cancelBackfill",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chive-backfill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="API, all six workers and the projector in one process")
    sub.add_parser("api", help="the XRPC API (with its operations projection)")
    worker = sub.add_parser("worker", help="the worker service of one backfill type")
    worker.add_argument("type", choices=model.BACKFILL_TYPES)
    sub.add_parser("projector", help="the record index projection")
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
    dead = sub.add_parser("dlq", help="the dead-letter topic")
    dead.add_argument("action", choices=["list", "replay"])
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
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pypdf logs every oddity of a damaged PDF at WARNING; citationExtraction reports the
    # outcome per eprint instead.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    if args.command == "token":
        return _token(settings, args)
    try:
        return asyncio.run(_async_main(settings, args))
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
    if args.command == "events":
        return await _events(settings, args)
    if args.command == "records":
        return await _records(settings, args)
    if args.command == "replay":
        return await _replay(settings)
    if args.command == "dlq":
        return await _dlq(settings, args.action)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.command == "up":
        await bootstrap.run_all(settings, stop)
        return 0
    async with bootstrap.open_log(settings) as event_log:
        if args.command == "api":
            await bootstrap.run_api(settings, event_log, stop)
        elif args.command == "worker":
            await bootstrap.run_workers(settings, event_log, [args.type], stop)
        elif args.command == "projector":
            await bootstrap.run_projector(settings, event_log, stop)
    return 0


def _token(settings, args) -> int:
    key = bootstrap.local_admin_key(settings)
    did = key.public.did_key()
    # A service-auth token names one method (lxm); a token without one is refused.
    lxm = args.lxm
    print(keys.mint_service_jwt(key, iss=did, aud=settings.service_did, lxm=lxm, ttl_s=args.ttl))
    print(f"issuer {did}, lxm {lxm}, valid {args.ttl}s", file=sys.stderr)
    return 0


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


async def _replay(settings) -> int:
    from services.audit import verify

    async with bootstrap.open_log(settings) as event_log:
        try:
            report = await verify(event_log, settings.data_dir)
        except FileNotFoundError as exc:
            print(f"chive-backfill: {exc}", file=sys.stderr)
            return 2
    for line in report["differences"]:
        print(line)
    print(
        json.dumps(
            {
                "operations": report["operations"],
                "records": report["records"],
                "differences": len(report["differences"]),
            }
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
