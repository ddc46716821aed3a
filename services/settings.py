"""Process settings, read once from the environment into one typed object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from services.atproto.syntax import is_did, is_http_url


class SettingsError(ValueError):
    pass


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    event_log: str = "sqlite"
    kafka_bootstrap_servers: str | None = None
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8080
    service_did: str = "did:web:localhost"
    admin_dids: tuple[str, ...] = ()
    plc_url: str = "https://plc.directory"
    partitions: int = 6
    # Kafka's own producer default; a broker without InitProducerId (Tansu) needs false.
    kafka_idempotence: bool = True
    kafka_replication: int = 1
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_ms: int = 3_000
    kafka_namespace: str = ""
    kafka_request_timeout_ms: int = 10_000
    stall_after_s: int = 120
    governance_pds_url: str = "https://governance.chive.pub"
    governance_did: str | None = None
    # GROBID for citationExtraction; unset: PDFs are read by the worker itself.
    grobid_url: str | None = None
    source_timeout_s: float = 15.0
    source_attempts: int = 5
    log_level: str = "INFO"
    # Outbound fetches may reach loopback/private addresses and plain http (local development
    # and tests only): services/outbound.py.
    allow_private_networks: bool = False
    # Requests per minute per client address on the XRPC endpoints (0: no limit).
    rate_limit_per_minute: int = 600
    # Connections the API serves at once; past it, new ones get 503.
    max_connections: int = 1000


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, int, "an integer")


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, float, "a number")


def _number(env, name, default, low, high, parse, kind: str):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {kind}, got {raw!r}") from None
    if not low <= value <= high:  # NaN fails this too
        raise SettingsError(f"{name} must be between {low} and {high}, got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").lower() or str(default).lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"{name} must be true or false, got {raw!r}")
    return raw in ("true", "1", "yes")


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    event_log = env.get("CHIVE_EVENT_LOG", "sqlite")
    if event_log not in ("sqlite", "kafka"):
        raise SettingsError(f"CHIVE_EVENT_LOG must be sqlite or kafka, got {event_log!r}")
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS") or None
    if event_log == "kafka" and not bootstrap:
        raise SettingsError("CHIVE_EVENT_LOG=kafka needs KAFKA_BOOTSTRAP_SERVERS")
    admins = tuple(d.strip() for d in env.get("CHIVE_ADMIN_DIDS", "").split(",") if d.strip())
    for did in admins:
        if not is_did(did):
            raise SettingsError(f"CHIVE_ADMIN_DIDS holds {did!r}, which is not a DID")
    service_did = env.get("CHIVE_SERVICE_DID", "did:web:localhost")
    if not is_did(service_did):
        raise SettingsError(f"CHIVE_SERVICE_DID must be a DID, got {service_did!r}")
    plc_url = env.get("CHIVE_PLC_URL", "https://plc.directory")
    if not is_http_url(plc_url):
        raise SettingsError(f"CHIVE_PLC_URL must be an http(s) URL, got {plc_url!r}")
    governance_pds_url = env.get("CHIVE_GOVERNANCE_PDS_URL", "https://governance.chive.pub")
    if not is_http_url(governance_pds_url):
        raise SettingsError(
            f"CHIVE_GOVERNANCE_PDS_URL must be an http(s) URL, got {governance_pds_url!r}"
        )
    governance_did = env.get("CHIVE_GOVERNANCE_DID") or None
    if governance_did is not None and not is_did(governance_did):
        raise SettingsError(f"CHIVE_GOVERNANCE_DID must be a DID, got {governance_did!r}")
    grobid_url = env.get("CHIVE_GROBID_URL") or None
    if grobid_url is not None and not is_http_url(grobid_url):
        raise SettingsError(f"CHIVE_GROBID_URL must be an http(s) URL, got {grobid_url!r}")
    return Settings(
        grobid_url=grobid_url.rstrip("/") if grobid_url else None,
        governance_pds_url=governance_pds_url.rstrip("/"),
        governance_did=governance_did,
        event_log=event_log,
        kafka_bootstrap_servers=bootstrap,
        data_dir=Path(env.get("CHIVE_DATA_DIR", "data")),
        host=env.get("CHIVE_HOST", "127.0.0.1"),
        port=_int(env, "CHIVE_PORT", 8080, 0, 65535),
        service_did=service_did,
        admin_dids=admins,
        plc_url=plc_url.rstrip("/"),
        partitions=_int(env, "CHIVE_PARTITIONS", 6, 1, 1024),
        kafka_idempotence=_bool(env, "CHIVE_KAFKA_IDEMPOTENCE", True),
        kafka_replication=_int(env, "CHIVE_KAFKA_REPLICATION", 1, 1, 16),
        kafka_session_timeout_ms=_int(env, "CHIVE_KAFKA_SESSION_TIMEOUT_MS", 10_000, 1000, 600_000),
        kafka_heartbeat_ms=_int(env, "CHIVE_KAFKA_HEARTBEAT_MS", 3_000, 100, 60_000),
        kafka_namespace=env.get("CHIVE_KAFKA_NAMESPACE", ""),
        kafka_request_timeout_ms=_int(env, "CHIVE_KAFKA_REQUEST_TIMEOUT_MS", 10_000, 500, 300_000),
        stall_after_s=_int(env, "CHIVE_STALL_AFTER_S", 120, 1, 86400 * 30),
        source_timeout_s=_float(env, "CHIVE_SOURCE_TIMEOUT_S", 15.0, 0.1, 600.0),
        source_attempts=_int(env, "CHIVE_SOURCE_ATTEMPTS", 5, 1, 20),
        log_level=env.get("CHIVE_LOG_LEVEL", "INFO").upper(),
        allow_private_networks=_bool(env, "CHIVE_ALLOW_PRIVATE_NETWORKS", False),
        rate_limit_per_minute=_int(env, "CHIVE_RATE_LIMIT_PER_MINUTE", 600, 0, 10_000_000),
        max_connections=_int(env, "CHIVE_MAX_CONNECTIONS", 1000, 1, 1_000_000),
    )
