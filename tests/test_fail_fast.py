"""A fatal error ends a process within seconds, with a non-zero exit and a one-line reason on
stderr, whatever the role; never a hang (a supervisor must see the process die)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.broker import free_port

DEADLINE_S = 15


def run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, list[str], float]:
    """(exit code, stderr lines, seconds) of `chive-backfill ARGS`."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**os.environ, "CHIVE_LOG_LEVEL": "WARNING", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S * 4,
    )
    return proc.returncode, proc.stderr.strip().splitlines(), time.monotonic() - t0


def assert_died(result, reason: str) -> None:
    code, lines, seconds = result
    assert code != 0, lines
    assert seconds < DEADLINE_S, f"took {seconds:.1f}s to die"
    assert lines, "no reason on stderr"
    last = lines[-1]
    assert last.startswith("chive-backfill: ") and reason in last, lines
    assert "Traceback" not in "\n".join(lines)


@pytest.mark.parametrize("role", [["up"], ["api"], ["projector"], ["worker", "didSync"]])
def test_bad_setting(tmp_path, role):
    env = {"CHIVE_DATA_DIR": str(tmp_path), "CHIVE_PARTITIONS": "zero"}
    assert_died(run(role, env, tmp_path), "CHIVE_PARTITIONS must be an integer")


@pytest.mark.parametrize("role", [["up"], ["api"], ["projector"]])
def test_unusable_data_dir(tmp_path, role):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")
    env = {"CHIVE_DATA_DIR": str(blocker), "CHIVE_PORT": str(free_port())}
    assert_died(run(role, env, tmp_path), str(blocker))


@pytest.mark.parametrize("role", [["up"], ["api"]])
def test_port_in_use(tmp_path, role):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {"CHIVE_DATA_DIR": str(tmp_path / "data"), "CHIVE_PORT": str(port)}
        assert_died(run(role, env, tmp_path), f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("role", [["up"], ["api"]])
def test_missing_lexicons(tmp_path, role):
    # A `schemas` package without documents shadows ours, as a broken install would.
    (tmp_path / "shadow" / "schemas").mkdir(parents=True)
    (tmp_path / "shadow" / "schemas" / "__init__.py").write_text("")
    root = Path(__file__).resolve().parents[1]
    env = {
        "CHIVE_DATA_DIR": str(tmp_path / "data"),
        "CHIVE_PORT": str(free_port()),
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "shadow"), str(root)]),
    }
    assert_died(run(role, env, tmp_path), "no lexicon documents")


@pytest.mark.parametrize("role", [["up"], ["projector"], ["worker", "freshnessScan"]])
def test_a_part_that_crashes(tmp_path, role):
    """An index file that is not a database: the part owning it fails, and the process ends."""
    data = tmp_path / "data"
    data.mkdir()
    name = "worker-records.db" if role[0] == "worker" else "records.db"
    (data / name).write_bytes(b"this is not an SQLite database" * 100)
    env = {"CHIVE_DATA_DIR": str(data), "CHIVE_PORT": str(free_port())}
    assert_died(run(role, env, tmp_path), "not a database")


def test_unreachable_kafka(tmp_path):
    env = {
        "CHIVE_DATA_DIR": str(tmp_path),
        "CHIVE_EVENT_LOG": "kafka",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
    }
    assert_died(run(["worker", "didSync"], env, tmp_path), "cannot reach Kafka")
