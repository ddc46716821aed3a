"""Process settings: each declared once, as a field of `Settings` with its type, bounds and
default, read from the environment variable `CHIVE_<FIELD>` (one exception:
KAFKA_BOOTSTRAP_SERVERS, the name Kafka's own tools use)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
from msgspec import Meta

from services.atproto.syntax import is_did, is_http_url


class SettingsError(ValueError):
    pass


def _range(low: float, high: float) -> Meta:
    return Meta(ge=low, le=high)


# Checks beyond the type, named in a field's Meta(extra={"format": ...}).
DID = Meta(extra={"format": "did"})
URL = Meta(extra={"format": "url"})
DIDS = Meta(extra={"format": "dids"})  # comma-separated


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    event_log: Literal["sqlite", "kafka"] = "sqlite"
    kafka_bootstrap_servers: str | None = None
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: Annotated[int, _range(0, 65535)] = 8080
    service_did: Annotated[str, DID] = "did:web:localhost"
    # Who may call the admin methods; empty: the local admin key (embedded default).
    admin_dids: Annotated[tuple[str, ...], DIDS] = ()
    plc_url: Annotated[str, URL] = "https://plc.directory"
    partitions: Annotated[int, _range(1, 1024)] = 6
    # Kafka's own producer default; a broker without InitProducerId (Tansu) needs false.
    kafka_idempotence: bool = True
    kafka_replication: Annotated[int, _range(1, 16)] = 1
    kafka_session_timeout_ms: Annotated[int, _range(1000, 600_000)] = 10_000
    kafka_heartbeat_ms: Annotated[int, _range(100, 60_000)] = 3_000
    kafka_namespace: str = ""
    kafka_request_timeout_ms: Annotated[int, _range(500, 300_000)] = 10_000
    # A running operation without a progress event for this long reads as stalled.
    stall_after_s: Annotated[int, _range(1, 86400 * 30)] = 120
    governance_pds_url: Annotated[str, URL] = "https://governance.chive.pub"
    governance_did: Annotated[str | None, DID] = None
    # GROBID for citationExtraction; unset: PDFs are read by the worker itself.
    grobid_url: Annotated[str | None, URL] = None
    # Each call to a PDS, the PLC directory or GROBID: total deadline and attempts.
    source_timeout_s: Annotated[float, _range(0.1, 600.0)] = 15.0
    source_attempts: Annotated[int, _range(1, 20)] = 5
    # Requests a worker has in flight at once, overall and to any one PDS (freshnessScan's
    # records, pdsScan's repos).
    source_concurrency: Annotated[int, _range(1, 1024)] = 8
    source_concurrency_per_pds: Annotated[int, _range(1, 1024)] = 4
    # Consecutive failures after which a PDS is given up for the rest of a freshnessScan.
    source_circuit_failures: Annotated[int, _range(1, 1000)] = 3
    # Documents citationExtraction reads at once.
    extraction_concurrency: Annotated[int, _range(1, 64)] = 4
    # A progress event at least this often while an operation runs, and after this many
    # records at the latest.
    progress_interval_s: Annotated[float, _range(0.05, 3600.0)] = 2.0
    progress_records: Annotated[int, _range(1, 10_000_000)] = 500
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # json: one JSON object per line; text: for people; auto: text on a terminal, else json.
    log_format: Literal["auto", "json", "text"] = "auto"
    # Outbound fetches may reach loopback/private addresses and plain http (local development
    # and tests only): services/outbound.py.
    allow_private_networks: bool = False
    # Requests per minute per client address on the XRPC endpoints (0: no limit).
    rate_limit_per_minute: Annotated[int, _range(0, 10_000_000)] = 600
    # Where a worker or projector process serves /healthz, /readyz and /metrics (unset: not
    # served; the API serves them on CHIVE_PORT).
    status_port: Annotated[int | None, _range(0, 65535)] = None
    # Connections the API serves at once; past it, new ones get 503.
    max_connections: Annotated[int, _range(1, 1_000_000)] = 1000


ENV_NAMES = {"kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS"}


def env_name(field: str) -> str:
    return ENV_NAMES.get(field, "CHIVE_" + field.upper())


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for field in msgspec.structs.fields(Settings):
        raw = env.get(env_name(field.name), "")
        if raw != "":
            values[field.name] = _parse(env_name(field.name), raw, field.type)
    settings = Settings(**values)
    if settings.event_log == "kafka" and not settings.kafka_bootstrap_servers:
        raise SettingsError("CHIVE_EVENT_LOG=kafka needs KAFKA_BOOTSTRAP_SERVERS")
    return settings


def _parse(name: str, raw: str, annotation: Any) -> Any:
    kind, metas = annotation, ()
    if get_origin(kind) is Annotated:
        kind, *metas = get_args(kind)
    fmt = next((m.extra.get("format") for m in metas if m.extra), None)
    args = [a for a in get_args(kind) if a is not type(None)]
    if args and get_origin(kind) is not Literal and get_origin(kind) is not tuple:
        kind = args[0]  # X | None: an unset variable is None already
    if fmt == "dids":
        value = tuple(d.strip() for d in raw.split(",") if d.strip())
        for did in value:
            if not is_did(did):
                raise SettingsError(f"{name} holds {did!r}, which is not a DID")
        return value
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        value = raw.upper() if name == "CHIVE_LOG_LEVEL" else raw
        if value not in choices:
            raise SettingsError(f"{name} must be {' or '.join(choices)}, got {raw!r}")
        return value
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise SettingsError(f"{name} must be true or false, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    if kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
        bounds = next((m for m in metas if m.ge is not None), None)
        low, high = (bounds.ge, bounds.le) if bounds else (-math.inf, math.inf)
        if not (low <= value <= high and math.isfinite(value)):
            raise SettingsError(f"{name} must be between {low} and {high}, got {raw}")
        return value
    if kind is Path:
        return Path(raw)
    if fmt == "did" and not is_did(raw):
        raise SettingsError(f"{name} must be a DID, got {raw!r}")
    if fmt == "url":
        if not is_http_url(raw):
            raise SettingsError(f"{name} must be an http(s) URL, got {raw!r}")
        return raw.rstrip("/")
    return raw
