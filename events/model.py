"""Every event chive-backfill writes, as versioned msgspec Structs.

Two streams:
- operation lifecycle events on ``OPERATIONS_TOPIC``, keyed by operation id, so that one
  operation's events stay in order within one partition;
- record events found on PDSes on ``RECORDS_TOPIC``, keyed by at-uri.

The envelope fields (``event_id``, ``schema_version``, ``operation_id``, ``occurred_at``) live on
every event; ``event_type`` is the msgspec tag. Headers repeat what a consumer filters on so it
can skip other backfill types without decoding.
"""

from __future__ import annotations

import random
import time
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

OPERATIONS_TOPIC = "chive.backfill.events"
RECORDS_TOPIC = "chive.backfill.records"

BACKFILL_TYPES = (
    "pdsScan",
    "freshnessScan",
    "citationExtraction",
    "fullReindex",
    "governanceSync",
    "didSync",
)
# A fullReindex's events per transaction when its request names none: the API fills it in,
# and the worker falls back to it for requests logged before the API did.
FULL_REINDEX_BATCH_SIZE = 100


# gc=False: events are immutable and never part of a reference cycle, so the garbage
# collector need not track them (a scan makes hundreds of thousands; tracked, they set off
# full collections of the whole heap).
class Event(msgspec.Struct, tag_field="event_type", kw_only=True, frozen=True, gc=False):
    event_id: str
    operation_id: str
    # Milliseconds since the epoch, UTC. Folds read time from here, never from the clock.
    occurred_at: int
    schema_version: int = 1


class BackfillRequested(Event, tag="BackfillRequested", frozen=True):
    backfill_type: str
    params: dict[str, Any]
    requested_by: str
    # Identity of a request for duplicate detection: type plus normalised parameters.
    dedupe_key: str
    # The operation id was picked to land in the partition of dedupe_key, so every request
    # with that key, and every event of those operations, is ordered in one partition
    # (projections/operations.duplicate_of). False on requests from before that rule.
    colocated: bool = False


class BackfillStarted(Event, tag="BackfillStarted", frozen=True):
    backfill_type: str
    worker: str
    attempt: int = 1


class BackfillProgressed(Event, tag="BackfillProgressed", frozen=True):
    backfill_type: str
    records_processed: int
    total_records: int | None = None
    # Opaque to everyone but the worker type that wrote it: where to resume after a crash.
    checkpoint: dict[str, Any] | None = None


class BackfillCompleted(Event, tag="BackfillCompleted", frozen=True, kw_only=True):
    backfill_type: str
    records_processed: int
    total_records: int | None = None
    # PDS base URLs the operation read from; pdsScan without a URL scans every one ever seen.
    sources: list[str] = []
    # v2: records seen but not indexed (they failed validation). v1 events upcast to 0.
    records_skipped: int = 0
    # Optional additions (defaults keep older v2 events valid): why records were skipped,
    # and records found gone at the source and deleted from the index.
    skip_reasons: dict[str, int] = {}
    records_deleted: int = 0
    # The records topic's end offsets when the operation finished: every record event it
    # wrote lies below them, so an index that has folded this far holds all of them.
    records_through: dict[int, int] | None = None
    schema_version: int = 2


class BackfillFailed(Event, tag="BackfillFailed", frozen=True):
    backfill_type: str
    error: str
    records_processed: int | None = None
    records_through: dict[int, int] | None = None  # as in BackfillCompleted


class BackfillCancelRequested(Event, tag="BackfillCancelRequested", frozen=True):
    backfill_type: str
    requested_by: str


class BackfillCancelled(Event, tag="BackfillCancelled", frozen=True):
    backfill_type: str
    records_processed: int | None = None
    records_through: dict[int, int] | None = None  # as in BackfillCompleted


class RecordUpserted(Event, tag="RecordUpserted", frozen=True):
    uri: str
    did: str
    collection: str
    rkey: str
    cid: str
    value: msgspec.Raw


class RecordDeleted(Event, tag="RecordDeleted", frozen=True):
    uri: str
    did: str
    collection: str
    rkey: str


class RepoSynced(Event, tag="RepoSynced", frozen=True):
    """A repository was read whole and verified at `rev` (its signed commit `commit`), and
    every record event of that read was appended before this one. freshnessScan asks the PDS
    only for repos whose rev moved since."""

    uri: str  # at://<did>: the key, like a record event's
    did: str
    pds: str
    rev: str
    commit: str


class Citation(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One entry of an eprint's reference list, as extracted."""

    title: str | None = None
    doi: str | None = None
    arxiv_id: str | None = None
    year: int | None = None
    authors: list[str] = []
    raw: str | None = None
    # The indexed eprint this entry cites, and how it was matched ("doi" or "title").
    matched_uri: str | None = None
    matched_by: str | None = None


class CitationsExtracted(Event, tag="CitationsExtracted", frozen=True):
    """The complete extracted reference list of one eprint (keyed by its uri): it replaces
    whatever was extracted for that eprint before."""

    uri: str
    did: str
    document_cid: str
    # "grobid" or "pdf-text"
    method: str
    citations: list[Citation] = []


OperationEvent = (
    BackfillRequested
    | BackfillStarted
    | BackfillProgressed
    | BackfillCompleted
    | BackfillFailed
    | BackfillCancelRequested
    | BackfillCancelled
)
RecordEvent = RecordUpserted | RecordDeleted | CitationsExtracted | RepoSynced
AnyEvent = OperationEvent | RecordEvent


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)

# Upcasters turn the raw dict of an old schema version into the next version, keyed by
# (event_type, from_version). Decoding applies them in a chain, so a replay of an old log folds.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _completed_v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """v1 had no records_skipped: nothing was counted as skipped then, so it is 0."""
    return {**raw, "records_skipped": 0}


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("BackfillCompleted", 1): _completed_v1_to_v2,
}
# The version each event type is written at now; older ones are upcast on decode.
CURRENT_VERSIONS: dict[str, int] = {"BackfillCompleted": 2}


class DecodeError(ValueError):
    """An event that cannot be decoded (poison message)."""


def new_event_id() -> str:
    """Time-ordered unique id: 48-bit ms timestamp + 80 random bits, Crockford base32."""
    return _ulid()


def new_operation_id() -> str:
    return _ulid()


def colocated_operation_id(dedupe_key: str, partition_of: Callable[[str], int]) -> str:
    """A new operation id in the same partition as `dedupe_key` (one in `partitions` draws
    hits it, so a handful of tries)."""
    target = partition_of(dedupe_key)
    while True:
        op_id = _ulid()
        if partition_of(op_id) == target:
            return op_id


_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
# A random byte to a character of the alphabet (its low 5 bits; 256 is a multiple of 32, so
# every character is as likely): 16 random characters are 80 random bits, in one C call.
_RANDOM_CHARS = bytes(ord(_ALPHABET[b & 31]) for b in range(256))
# The time part (10 characters) of the last millisecond an id was made in: every record of a
# scan gets an id, and most share their millisecond with the one before.
_time_part: tuple[int, str] = (-1, "")


def _ulid(ms: int | None = None) -> str:
    global _time_part
    if ms is None:
        ms = int(time.time() * 1000)
    if _time_part[0] != ms:
        _time_part = (ms, "".join(_ALPHABET[(ms >> shift) & 31] for shift in range(45, -5, -5)))
    # Identifiers, not secrets: the random module's generator (seeded from os.urandom, and
    # seeded afresh in a forked child) is enough, and a fifth of the cost of os.urandom.
    return _time_part[1] + random.randbytes(16).translate(_RANDOM_CHARS).decode()


E = TypeVar("E", bound=Event)


def new_event(cls: type[E], operation_id: str, **fields: Any) -> E:
    """An event stamped now with a fresh id: how every producer creates one."""
    ms = now_ms()
    return cls(event_id=_ulid(ms), operation_id=operation_id, occurred_at=ms, **fields)


def now_ms() -> int:
    return int(time.time() * 1000)


def format_datetime(ms: int) -> str:
    """UTC, `Z`, millisecond precision: the lexicon datetime form we emit."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def encode(event: AnyEvent) -> bytes:
    return _encoder.encode(event)


def headers_for(event: AnyEvent) -> dict[str, str]:
    headers = {
        "event_type": _tag(event),
        "event_id": event.event_id,
        "schema_version": str(event.schema_version),
    }
    backfill_type = getattr(event, "backfill_type", None)
    if backfill_type is not None:
        headers["backfill_type"] = backfill_type
    return headers


def decode(value: bytes) -> AnyEvent:
    """Decode an event, upcasting older schema versions first. Raises DecodeError."""
    try:
        event = _decoder.decode(value)
        if event.schema_version == _CURRENT_BY_CLASS.get(type(event), 1):
            return event
    except msgspec.ValidationError:
        pass  # perhaps an older version whose shape differs: upcast below
    except msgspec.DecodeError as exc:
        raise DecodeError(str(exc)) from exc
    try:
        raw = msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise DecodeError(str(exc)) from exc
    if not isinstance(raw, dict):
        raise DecodeError("event is not a JSON object")
    version = raw.get("schema_version", 1)
    current = CURRENT_VERSIONS.get(raw.get("event_type"), 1)
    if not isinstance(version, int) or version > current:
        raise DecodeError(f"schema_version {version!r} is not one this service reads")
    try:
        return msgspec.convert(upcast(raw), AnyEvent)
    except msgspec.ValidationError as exc:
        raise DecodeError(str(exc)) from exc


_CURRENT_BY_CLASS = {
    cls: CURRENT_VERSIONS[cls.__struct_config__.tag]
    for cls in typing.get_args(AnyEvent)
    if cls.__struct_config__.tag in CURRENT_VERSIONS
}


def _tag(event: AnyEvent) -> str:
    return type(event).__struct_config__.tag


def upcast(raw: dict[str, Any]) -> dict[str, Any]:
    event_type = raw.get("event_type")
    version = raw.get("schema_version", 1)
    while (step := UPCASTERS.get((event_type, version))) is not None:
        raw = step(raw)
        version += 1
        raw["schema_version"] = version
    return raw
