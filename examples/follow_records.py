"""Follow chive-backfill's records topic with plain aiokafka: print each record indexed or
deleted, as a service that keeps its own copy of Chive's records would consume them.

No chive-backfill code is imported: the contract is schemas/asyncapi.yaml and
schemas/events/*.json. The group's offsets are committed after each batch is handled, so a
restarted subscriber carries on where it stopped (at least once: handle events idempotently,
by event_id or by comparing cids).

    python examples/follow_records.py --bootstrap localhost:9092 [--namespace NS] [--max N]
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiokafka import AIOKafkaConsumer

TOPIC = "chive.backfill.records"


def handle(headers: dict[str, str], event: dict) -> str | None:
    """One line per record event; other events (citation sets, repo revisions) are skipped."""
    kind = headers.get("event_type")
    if kind == "RecordUpserted":
        return f"upsert {event['uri']} {event['cid']}"
    if kind == "RecordDeleted":
        return f"delete {event['uri']}"
    return None


async def follow(bootstrap: str, namespace: str, group: str, limit: int | None) -> None:
    # CHIVE_KAFKA_NAMESPACE prefixes topic and group names with "<namespace>.".
    prefix = f"{namespace}." if namespace else ""
    consumer = AIOKafkaConsumer(
        prefix + TOPIC,
        bootstrap_servers=bootstrap,
        group_id=prefix + group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    seen = 0
    try:
        while limit is None or seen < limit:
            batches = await consumer.getmany(timeout_ms=1000)
            for messages in batches.values():
                for message in messages:
                    headers = {k: v.decode() for k, v in message.headers}
                    line = handle(headers, json.loads(message.value))
                    if line is not None:
                        print(line, flush=True)
                        seen += 1
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--namespace", default="", help="CHIVE_KAFKA_NAMESPACE of the service")
    parser.add_argument("--group", default="example-records-follower")
    parser.add_argument("--max", type=int, default=None, help="stop after this many records")
    args = parser.parse_args()
    asyncio.run(follow(args.bootstrap, args.namespace, args.group, args.max))


if __name__ == "__main__":
    main()
