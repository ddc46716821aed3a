"""Apache Kafka itself for the test suite: one KRaft node (broker and controller) run from the
release's jars, which Maven fetches from Maven Central once (testkit/kafka/pom.xml pins the
version) into .tools/kafka/libs. Data lives in a directory the caller owns, so a broker that is
stopped or killed can start again on the same log."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from testkit.broker import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "testkit" / "kafka" / "pom.xml"
LIBS = ROOT / ".tools" / "kafka" / "libs"


def available() -> bool:
    return bool(shutil.which("java") and shutil.which("mvn"))


def install() -> Path:
    """The broker's classpath directory, fetched once; a lock keeps concurrent runs apart."""
    stamp = LIBS / ".pom"
    pom = POM.read_bytes()
    if stamp.exists() and stamp.read_bytes() == pom:
        return LIBS
    LIBS.parent.mkdir(parents=True, exist_ok=True)
    with open(LIBS.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_bytes() == pom:
            return LIBS
        shutil.rmtree(LIBS, ignore_errors=True)
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={LIBS}",
            ],
            check=True,
            timeout=600,
        )
        stamp.write_bytes(pom)
    return LIBS


class ApacheKafka:
    """A single-node KRaft cluster on loopback. `stop()` and `kill()` keep its data dir, and
    `start()` brings the same broker back on the same port."""

    def __init__(
        self, data_dir: Path, port: int | None = None, advertised_port: int | None = None
    ) -> None:
        """`advertised_port`: where clients are told to connect (a proxy in front)."""
        self.libs = install()
        self.dir = data_dir
        self.port = port or free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:  # the broker's port is not bound yet
            self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{advertised_port or self.port}"
        self._proc: subprocess.Popen | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self._config = self.dir / "server.properties"
        self._config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://{self.bootstrap}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    f"log.dirs={self.dir / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=6",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # Tests use short sessions so a killed member's partitions move quickly.
                    "group.initial.rebalance.delay.ms=0",
                    "group.min.session.timeout.ms=500",
                    "auto.create.topics.enable=false",
                    "",
                ]
            )
        )
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the tool would read a leading "-" as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        subprocess.run(
            [
                "java",
                "-cp",
                f"{self.libs}/*",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self._config),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self, deadline_s: float = 60.0) -> ApacheKafka:
        log = open(self.dir / "broker.log", "ab")
        self._proc = subprocess.Popen(
            [
                "java",
                "-Xms256m",
                "-Xmx512m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                f"{self.libs}/*",
                "kafka.Kafka",
                str(self._config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for_port("127.0.0.1", self.port, deadline_s)
        except RuntimeError:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: the broker flushes and closes its logs)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None
