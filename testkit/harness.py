"""Runs the whole service in the test's event loop (or as a subprocess) against loopback
servers, and calls it over HTTP like an admin would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from services import bootstrap
from services.atproto import keys
from services.settings import Settings
from testkit.waiting import eventually

SERVICE_DID = "did:web:chive-backfill.test"


class Admin:
    def __init__(self, key: keys.PrivateKey | None = None, did: str | None = None) -> None:
        self.key = key or keys.PrivateKey.generate()
        self.did = did or self.key.public.did_key()

    def token(self, lxm: str | None, **overrides: Any) -> str:
        args = {"iss": self.did, "aud": SERVICE_DID, "lxm": lxm, **overrides}
        return keys.mint_service_jwt(self.key, **args)


class Client:
    def __init__(self, base_url: str, admin: Admin) -> None:
        self.base_url = base_url
        self.admin = admin
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)

    async def close(self) -> None:
        await self.http.aclose()

    def auth(self, nsid: str, admin: Admin | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {(admin or self.admin).token(nsid)}"}

    async def post(self, nsid: str, body: Any, admin: Admin | None = None) -> httpx.Response:
        return await self.http.post(f"/xrpc/{nsid}", json=body, headers=self.auth(nsid, admin))

    async def get(self, nsid: str, admin: Admin | None = None, **params) -> httpx.Response:
        return await self.http.get(f"/xrpc/{nsid}", params=params, headers=self.auth(nsid, admin))

    async def up(self) -> bool:
        """True once the API answers its health check."""
        try:
            return (await self.http.get("/xrpc/_health")).status_code == 200
        except httpx.TransportError:
            return False

    async def trigger(self, **body) -> dict[str, Any]:
        response = await self.post("pub.chive.admin.triggerBackfill", body)
        assert response.status_code == 200, response.text
        return response.json()["operation"]

    async def status(self, op_id: str) -> dict[str, Any]:
        response = await self.get("pub.chive.admin.getBackfillStatus", id=op_id)
        assert response.status_code == 200, response.text
        return response.json()["operation"]

    async def wait_finished(self, op_id: str, timeout: float = 60.0) -> dict[str, Any]:
        async def finished():
            op = await self.status(op_id)
            return op if op["status"] != "running" else None

        return await eventually(finished, timeout=timeout, what=f"operation {op_id} to finish")

    async def wait_processed(
        self, op_id: str, at_least: int = 1, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Wait until the running operation has processed `at_least` records; an operation
        that finishes first fails the test (a cancel or kill meant for running work)."""

        async def reached():
            op = await self.status(op_id)
            assert op["status"] == "running", f"finished before {at_least} records: {op}"
            return op if op["recordsProcessed"] >= at_least else None

        return await eventually(reached, timeout=timeout, what=f"{at_least} records processed")


async def starts(bootstrap: str, namespace: str) -> list[tuple[str, str]]:
    """(operation id, worker type@host:pid) of every BackfillStarted on a Kafka deployment's
    operations topic, in per-partition order."""
    from events import model
    from events.kafka_log import KafkaEventLog
    from events.log import read_to_end

    log = KafkaEventLog(bootstrap, 3, namespace=namespace, enable_idempotence=kafka_idempotence())
    await log.start()
    try:
        messages = await read_to_end(log, model.OPERATIONS_TOPIC)
    finally:
        await log.close()
    return [
        (m.key, model.decode(m.value).worker)
        for m in messages
        if m.headers["event_type"] == "BackfillStarted"
    ]


def kafka_idempotence() -> bool:
    """On unless the suite's broker lacks it (Tansu has no InitProducerId)."""
    from testkit.broker import broker_kind

    return broker_kind() != "tansu"


def settings_for(
    data_dir: Path,
    admin: Admin,
    plc_url: str,
    kafka: str | None = None,
    namespace: str = "",
    port: int = 0,
) -> Settings:
    return Settings(
        event_log="kafka" if kafka else "sqlite",
        kafka_bootstrap_servers=kafka,
        kafka_namespace=namespace,
        kafka_session_timeout_ms=2000,
        kafka_heartbeat_ms=300,
        kafka_idempotence=kafka_idempotence(),
        data_dir=data_dir,
        port=port,
        service_did=SERVICE_DID,
        admin_dids=(admin.did,),
        plc_url=plc_url,
        partitions=3,
        # Every test server listens on loopback over http; the outbound policy's defaults
        # are tested with this off (test_hostile_input.py).
        allow_private_networks=True,
        rate_limit_per_minute=0,
    )


def service_env(
    data_dir: Path,
    port: int,
    plc_url: str,
    admin: Admin | None = None,
    kafka: str | None = None,
    namespace: str = "",
    **extra: str,
) -> dict[str, str]:
    """Environment of a `chive-backfill` subprocess: the settings_for() of the process world;
    `extra` adds variables (say CHIVE_GOVERNANCE_DID)."""
    env = {
        "CHIVE_DATA_DIR": str(data_dir),
        "CHIVE_PORT": str(port),
        "CHIVE_PLC_URL": plc_url,
        "CHIVE_SERVICE_DID": SERVICE_DID,
        "CHIVE_PARTITIONS": "3",
        "CHIVE_LOG_LEVEL": "WARNING",
        "CHIVE_ALLOW_PRIVATE_NETWORKS": "true",
        "CHIVE_RATE_LIMIT_PER_MINUTE": "0",
    }
    env.update(extra)
    if admin is not None:
        env["CHIVE_ADMIN_DIDS"] = admin.did
    if kafka:
        env.update(
            CHIVE_EVENT_LOG="kafka",
            KAFKA_BOOTSTRAP_SERVERS=kafka,
            CHIVE_KAFKA_NAMESPACE=namespace,
            CHIVE_KAFKA_SESSION_TIMEOUT_MS="2000",
            CHIVE_KAFKA_HEARTBEAT_MS="300",
            CHIVE_KAFKA_IDEMPOTENCE=str(kafka_idempotence()).lower(),
        )
    return env


@contextlib.asynccontextmanager
async def running_service(settings: Settings, admin: Admin) -> AsyncIterator[Client]:
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_ready(port: int) -> None:
        ready.set_result(port)

    task = asyncio.create_task(bootstrap.run_all(settings, stop, on_ready))
    done, _ = await asyncio.wait([task, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        await task
    assert ready.done(), "service did not become ready in 30s"
    client = Client(f"http://127.0.0.1:{ready.result()}", admin)
    try:
        yield client
    finally:
        await client.close()
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def process_service(
    env: dict[str, str], log_path: Path, admin: Admin
) -> AsyncIterator[tuple[ServiceProcess, Client]]:
    """`chive-backfill up` as a subprocess (for SIGKILL tests) and a client, once the API
    answers; the process is killed on the way out if it still runs."""
    service = ServiceProcess(env, log_path)
    client = Client(f"http://127.0.0.1:{env['CHIVE_PORT']}", admin)
    try:
        service.start()
        await eventually(client.up, timeout=30, what="API up")
        yield service, client
    finally:
        await client.close()
        if service.proc is not None and service.proc.poll() is None:
            service.kill()


class ServiceProcess:
    """A `chive-backfill` command (default `up`) as a real subprocess, for kill -9 tests."""

    def __init__(
        self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ("up",)
    ) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> int:
        """SIGTERM, once the process handles it (one still importing its modules would die of
        the signal, not stop: a restart moments before must not read as an unclean stop),
        then its exit code."""
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while (
            self.proc.poll() is None
            and not catches_sigterm(self.proc.pid)
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        self.proc.terminate()
        return self.proc.wait(timeout=30)


def catches_sigterm(pid: int) -> bool:
    """The process has a handler for SIGTERM (its caught-signals mask in /proc says so)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """`chive-backfill ARGS` in a subprocess: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def wait_index(data_dir: Path, expected_uris: list[str], timeout: float = 20.0) -> None:
    """Wait until the record index under `data_dir` holds exactly these live records."""
    from projections.index_reader import FollowingIndex

    index = FollowingIndex(data_dir)
    await index.open()
    try:

        async def matches() -> bool:
            return [u for u, _ in await index.uris()] == expected_uris

        await eventually(
            matches, timeout=timeout, what="record index to hold exactly the expected records"
        )
    finally:
        await index.close()


async def kill_while_running(
    service: ServiceProcess,
    client: Client,
    op_id: str,
    thresholds: tuple[int, ...],
    timeout: float = 90.0,
) -> None:
    """SIGKILL and restart `service` each time the operation passes a threshold of
    recordsProcessed (or has finished), waiting for the API to answer again after each."""
    for threshold in thresholds:

        async def reached(threshold=threshold) -> bool:
            current = await client.status(op_id)
            return current["recordsProcessed"] >= threshold or current["status"] != "running"

        await eventually(reached, timeout=timeout, what=f"{threshold} records processed")
        service.kill()
        service.start()
        await eventually(client.up, timeout=30, what="API up after the kill")


async def attempts(env: dict[str, str], op_id: str) -> int:
    """How many times the operation was started (1 + resumes), from the audit view."""
    code, out, _ = await run_cli(env, "events", "--operation", op_id)
    assert code == 0
    return sum(
        json.loads(line)["event"]["event_type"] == "BackfillStarted" for line in out.splitlines()
    )
